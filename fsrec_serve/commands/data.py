"""``fsrec data``: inspect, split and download data sets (a preset or your own log)."""

from __future__ import annotations

import argparse
import json


def add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", default=None, help="folder holding the data sets (env FSREC_DATA_DIR)")


def add_parsers(sub) -> None:
    from ..data.args import add_data_arguments

    p = sub.add_parser("data", help="inspect, split and download data sets")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    dsub.required = True

    s = dsub.add_parser(
        "stats", help="counts, cleaning steps and split summary of a data set",
        description="Read a preset (ml-100k, beauty) or your own log (--data ...), run the cleaning "
        "steps and the default split, and print what each step kept and removed.",
    )
    s.add_argument("dataset", nargs="?", default=None, help="ml-100k or beauty (or use --data)")
    add_data_dir(s)
    s.add_argument("--seed", type=int, default=0, help="split seed")
    add_data_arguments(s)
    s.set_defaults(func=_stats)

    d = dsub.add_parser("download", help="download a data set and verify its SHA-256")
    d.add_argument("dataset", choices=["ml-100k"])
    add_data_dir(d)
    d.set_defaults(func=_download)

    v = dsub.add_parser("verify", help="verify the SHA-256 of a downloaded data set")
    v.add_argument("dataset", choices=["ml-100k"])
    add_data_dir(v)
    v.set_defaults(func=_verify)


def _data_dir(args):
    from ..settings import get_settings

    return get_settings(data_dir=args.data_dir).data_dir


def _stats(args) -> int:
    from ..data import SplitConfig, load_interactions, make_splits, require_data_source

    data = load_interactions(require_data_source(args, "fsrec data stats", dataset=args.dataset))
    splits = make_splits(data, SplitConfig(seed=args.seed))
    out = {"interactions": len(data), "users": data.n_users, "items": data.n_items,
           "cleaning": data.stats, **splits.summary()}
    print(json.dumps(out, indent=2))
    return 0


def _download(args) -> int:
    from ..data import download_ml100k

    path = download_ml100k(_data_dir(args))
    print(f"ml-100k ready and verified in {path}")
    return 0


def _verify(args) -> int:
    from ..data import verify_ml100k

    verify_ml100k(_data_dir(args) / "ml-100k")
    print("ml-100k: all SHA-256 checksums match")
    return 0

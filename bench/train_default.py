"""`fsrec train --data LOG` with no other flag, against the plain SASRec recipe on the same split.

A new user's first run: the log is read as an unknown file (``--format sequences`` only says how
to parse it), every setting comes from the rule fitted to its statistics. The command runs as a
subprocess, exactly as typed; ``fsrec evaluate`` scores its test item. The plain recipe
(bench/plain_sasrec.py) is trained on the same split (the one recorded with the model) and scored
by the same evaluation code.

    python -m bench.train_default --data ../shared/data/amazon-beauty/Beauty.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import summarize, write_results  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
METRICS = ("hr@10", "ndcg@10", "mrr@10")


def run_cli(data: str, out: Path) -> dict:
    """`fsrec train --data DATA --format sequences --output-dir OUT`, then `fsrec evaluate`."""
    cmd = [sys.executable, "-m", "fsrec_serve.cli", "train", "--data", data, "--format", "sequences",
           "--output-dir", str(out), "--no-progress"]
    t0 = time.perf_counter()
    train = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - t0
    ev = subprocess.run([sys.executable, "-m", "fsrec_serve.cli", "evaluate", "--model", str(out)],
                        cwd=REPO, capture_output=True, text=True, check=True)
    return {"command": " ".join(cmd[2:]), "seconds": seconds, "train": json.loads(train.stdout),
            "fitted": [ln.strip() for ln in train.stderr.splitlines() if " = " in ln or "fsrec train:" in ln],
            "test": json.loads(ev.stdout)}


def portable(obj, work: str):
    """``obj`` (JSON-able) with this machine's folders replaced by the names a reader sets:
    the data folder by ``$FSREC_DATA_DIR`` and the work folder by ``$WORK``."""
    text = json.dumps(obj)
    data_dir = os.environ.get("FSREC_DATA_DIR")
    for folder, name in ((work, "$WORK"), (data_dir, "$FSREC_DATA_DIR")):
        if folder:
            text = text.replace(str(Path(folder).resolve()), name).replace(folder.rstrip("/"), name)
    return json.loads(text)


def run_plain(data: str, out: Path, seed: int, max_seconds: float) -> dict:
    """The plain recipe on the split recorded with the CLI's model."""
    from bench.plain_sasrec import PlainConfig, train_plain
    from fsrec_serve.data import DataSpec, SplitConfig, load_interactions, make_splits
    from fsrec_serve.evaluation import evaluate_next_item

    run = json.loads((out / "fsrec_run.json").read_text())
    splits = make_splits(load_interactions(DataSpec(path=data, format="sequences")),
                         SplitConfig(**run["split_config"]))
    r = train_plain(splits, PlainConfig(max_seconds=max_seconds), splits.loo_valid(), seed=seed)
    test = evaluate_next_item(r.pop("model"), splits.loo_test(), ks=(5, 10, 20))
    return {"test": test, **{k: r[k] for k in ("best_valid", "best_epoch", "seconds_to_best", "seconds_total")},
            "epochs_run": len(r["history"]), "history": r["history"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a one-user-a-line log (read with --format sequences)")
    p.add_argument("--work", default="/tmp/bench/train-default", help="where the model is written")
    p.add_argument("--seed", type=int, default=0, help="plain recipe seed (the CLI uses its default)")
    p.add_argument("--plain-max-seconds", type=float, default=1800, help="plain recipe budget")
    p.add_argument("--skip-cli", action="store_true", help="reuse the model already in --work")
    p.add_argument("--out", default="train-default")
    args = p.parse_args(argv)
    out = Path(args.work) / "model"
    cli = None if args.skip_cli else run_cli(args.data, out)
    if cli:
        print(json.dumps({k: cli[k] for k in ("seconds", "fitted")}, indent=1), flush=True)
        (Path(args.work) / "cli.json").write_text(json.dumps(cli, indent=1))
    cli = cli or json.loads((Path(args.work) / "cli.json").read_text())
    plain = run_plain(args.data, out, args.seed, args.plain_max_seconds)
    name = Path(args.data).stem
    rows = [summarize([cli["test"]["model"][m]], dataset=name, protocol="loo-full", method="fsrec-train-default", metric=m)
            for m in METRICS]
    rows.append(summarize([cli["seconds"]], dataset=name, protocol="loo-full", method="fsrec-train-default",
                          metric="seconds"))
    rows += [summarize([plain["test"][m]], dataset=name, protocol="loo-full", method="plain-sasrec", metric=m)
             for m in METRICS]
    rows.append(summarize([plain["seconds_to_best"]], dataset=name, protocol="loo-full", method="plain-sasrec",
                          metric="seconds"))
    command = "python -m bench.train_default " + " ".join(argv or sys.argv[1:])
    command = portable(command, args.work)
    path = write_results(args.out, command, rows, extra={
        "notes": ("`fsrec train --data LOG --format sequences` as a new user types it (settings fitted to the "
                  "log's statistics, default split: cold users and items held out), scored by `fsrec "
                  "evaluate` on the warm users' test item (full ranking, history excluded); plain-sasrec: "
                  "bench/plain_sasrec.py trained on the same split, early-stopped on all warm users' "
                  "validation item, scored by the same code; seconds = the whole CLI run (fsrec) and the "
                  "time to the best epoch (plain)"),
        "runs": portable([{"method": "fsrec-train-default", **cli}, {"method": "plain-sasrec", **plain}], args.work),
    })
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    sys.exit(main())

"""``fsrec recommend``: ask a running server for recommendations, for one history of raw item ids
or for a user id (:meth:`fsrec_serve.client.RecommenderClient.recommend` /
``recommend_for_user``); prints a table or JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def add_parsers(sub) -> None:
    r = sub.add_parser(
        "recommend",
        help="ask a running server for recommendations for one history",
        description="Query a running tritonserver: raw item ids in (oldest first), raw item ids and scores out.",
    )
    r.add_argument("--url", default=None, help="server address (default 127.0.0.1 and the protocol's port)")
    r.add_argument("--protocol", choices=["grpc", "http"], default=None, help="default: from the url scheme, else grpc")
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument("--history", nargs="+", metavar="ITEM", help="raw item ids, oldest first")
    who.add_argument("--user", default=None, metavar="ID",
                     help="a user id: the server reads the user's history and parameters from its store")
    r.add_argument("--recent", nargs="+", default=None, metavar="ITEM",
                   help="with --user: raw item ids not recorded yet (oldest first)")
    r.add_argument("--k", type=int, default=10, help="number of recommendations (default 10)")
    r.add_argument("--repository", default=None,
                   help="model repository the server serves: id map and limits are read from it")
    r.add_argument("--item-map", default=None, help="item_map.json (instead of --repository)")
    r.add_argument("--model", default=None, help="model name (default fsrec)")
    r.add_argument("--model-version", default="", help="model version (default: the server's latest)")
    r.add_argument("--on-unknown", choices=["drop", "error"], default="drop",
                   help="unknown ids: drop with a warning (default) or refuse")
    r.add_argument("--timeout", type=float, default=10.0, help="seconds per attempt (default 10)")
    r.add_argument("--retries", type=int, default=2, help="retries when the server is unavailable (default 2)")
    r.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="extra request header (repeatable), e.g. a gateway's auth")
    r.add_argument("--ssl", action="store_true", help="TLS (grpc ssl channel / https)")
    r.add_argument("--root-certificates", default=None, help="CA bundle (PEM) for --ssl")
    r.add_argument("--private-key", default=None, help="client key (PEM) for mutual TLS")
    r.add_argument("--certificate-chain", default=None, help="client certificate (PEM) for mutual TLS")
    r.add_argument("--item-metadata", default=None, metavar="PATH",
                   help="item file (CSV/TSV/Parquet/JSON Lines, .gz read) with a title per item: titles are "
                   "printed next to the recommended ids (ids without a title print alone)")
    r.add_argument("--item-id-col", default="item_id", help="id column of --item-metadata (default item_id)")
    r.add_argument("--title-col", default="title", help="title column of --item-metadata (default title)")
    r.add_argument("--json", action="store_true", help="print JSON instead of a table")
    r.set_defaults(func=_recommend)


def item_titles(path: str | Path, id_col: str = "item_id", title_col: str = "title") -> dict[str, str]:
    """raw item id -> title from an item metadata file (only the id and title columns are read).
    Raises DataNotFoundError / DataFormatError naming the file and the option to fix."""
    from ..data import read_item_metadata
    from ..data.spec import ItemMetadataSpec
    from ..errors import DataFormatError, DataNotFoundError

    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"--item-metadata {path}: no such file or directory; pass an existing item file "
                                f"with the columns {id_col!r} and {title_col!r}, or leave the option out")
    spec = ItemMetadataSpec(path=str(path), id_col=id_col, title_col=title_col, categories_col=None)
    try:
        return read_item_metadata(spec).titles
    except DataFormatError as e:
        raise DataFormatError(f"--item-metadata: {e} (the columns are chosen with --item-id-col / --title-col)") from e


def _headers(pairs: list[str]) -> dict[str, str]:
    from ..errors import ConfigError

    headers = {}
    for h in pairs:
        name, sep, value = h.partition("=")
        if not sep or not name:
            raise ConfigError(f"--header {h!r}: use NAME=VALUE")
        headers[name.strip()] = value
    return headers


def _recommend(args) -> int:
    from ..client import RecommenderClient

    titles = item_titles(args.item_metadata, args.item_id_col, args.title_col) if args.item_metadata else None
    with RecommenderClient(
        args.url, protocol=args.protocol, model_name=args.model, model_version=args.model_version,
        repository=args.repository, item_map=args.item_map, on_unknown=args.on_unknown, timeout_s=args.timeout,
        retries=args.retries, headers=_headers(args.header) or None, ssl=args.ssl,
        root_certificates=args.root_certificates, private_key=args.private_key,
        certificate_chain=args.certificate_chain,
    ) as client:  # fmt: skip
        if args.user is not None:
            rec = client.recommend_for_user(args.user, k=args.k, recent_items=args.recent)
        else:
            rec = client.recommend(args.history, k=args.k)
    if args.json:
        _print_json(args, rec, titles)
    else:
        _print_table(args, rec, titles, has_item_map=client.item_map is not None)
    return 0


def _print_json(args, rec, titles: dict | None) -> None:
    out = {"history": args.history, "items": rec.items, "scores": rec.scores,
           "model_version": rec.model_version, "dropped": list(rec.dropped), "source": rec.source}  # fmt: skip
    if titles is not None:
        out["titles"] = [titles.get(str(item)) for item in rec.items]
    print(json.dumps(out))


def _print_table(args, rec, titles: dict | None, has_item_map: bool) -> None:
    if not has_item_map:
        print("note: no id map (pass --repository or --item-map): ids are the model's indices", file=sys.stderr)
    if args.user is not None:
        print(f"by user id ({rec.source}{': ' + ' '.join(args.recent) if args.recent else ''})")
    else:
        print(f"history: {' '.join(map(str, args.history))}")
    if rec.dropped:
        print(f"dropped (unknown): {' '.join(map(str, rec.dropped))}")
    print(f"model version: {rec.model_version}")
    print(f"{'rank':>4}  {'item':<12} {'score':>8}" + ("  title" if titles is not None else ""))
    for i, (item, score) in enumerate(zip(rec.items, rec.scores), 1):
        title = titles.get(str(item), "") if titles is not None else ""
        print(f"{i:>4}  {item!s:<12} {score:8.4f}" + (f"  {title}" if title else ""))

"""``fsrec events ingest``: an interaction log -> the store's event log (idempotent)."""

from __future__ import annotations

import json

from ..contract import DEFAULT_REPOSITORY
from ..data.args import add_data_arguments, require_data_source


def add_parsers(sub) -> None:
    p = sub.add_parser("events", help="the event log of the live loop (ingest a log into the store)")
    esub = p.add_subparsers(dest="events_command", metavar="ACTION")
    esub.required = True
    i = esub.add_parser("ingest", help="append an interaction log to the store's event log (same log twice = once)")
    add_data_arguments(i, presets=True)
    i.add_argument("--store", default=None,
                   help="store URL: a SQLite path / sqlite:///path, or redis://host:port/db (default $FSREC_STORE, "
                        "else the embedded file in the state folder)")
    i.add_argument("--repository", default=DEFAULT_REPOSITORY,
                   help=f"model repository whose ranker's item_map.json maps item ids (default {DEFAULT_REPOSITORY})")
    i.add_argument("--model", default="fsrec", help="ranker model name (default fsrec)")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    i.set_defaults(func=_ingest)


def _ingest(args) -> int:
    from dataclasses import asdict

    from ..data import load_interactions
    from ..store import open_store
    from ..store.ingest import ingest_log
    from ..store.keys import UserKeyer
    from .serve import ranker_item_map

    spec = require_data_source(args, "fsrec events ingest")
    item_map = ranker_item_map(args.repository, args.model)
    data = load_interactions(spec)
    with open_store(args.store) as store:
        report = ingest_log(data, store, item_map, UserKeyer())
        where = store.url
    if args.json:
        print(json.dumps({**asdict(report), "store": where}))
    else:
        print(f"{report.rows} events read into {where}: {report.stored} stored, {report.duplicates} already there, "
              f"{report.new_item_events} of items the model does not know (kept); {report.users} users "
              f"({report.seconds:.1f}s)")
    return 0

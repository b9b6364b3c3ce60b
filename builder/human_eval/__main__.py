"""`python -m builder.human_eval serve|report`: rate captions blind in a browser, then tabulate the answers.

Bad input (dataset, column, settings, database) fails with one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from dataclasses import asdict
from pathlib import Path

from builder.human_eval.errors import HumanEvalError
from map_fns.fetch import FetchConfig
from map_fns.net_policy import parse_networks


def networks(text: str) -> str:
    parse_networks(text)  # raises ValueError, which argparse reports
    return text


def positive_int(text: str) -> int:
    if int(text) < 1:
        raise ValueError(text)
    return int(text)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m builder.human_eval",
                                     description="Rate captions blind in a browser (serve), then tabulate (report).")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the rating pages")
    serve.add_argument("--dataset", required=True, help="finished output folder or Hub dataset repo id")
    serve.add_argument("--db", required=True, type=Path, help="SQLite file of items and answers (made if missing)")
    serve.add_argument("--human_column", default="TEXT", help="the human-written caption column")
    serve.add_argument("--references", default="",
                       help="human captions by image URL instead (as builder.tune's --references: Hub dataset id or "
                            "local parquet/jsonl/csv; columns URL/url/coco_url/image_url and "
                            "captions/caption/sentences/TEXT/text)")
    serve.add_argument("--items", type=positive_int, default=100, help="rows to rate; two captions each")
    serve.add_argument("--seed", type=int, default=0, help="which rows: the same seed picks the same rows")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7860, help="0: any free port")
    serve.add_argument("--allow_networks", type=networks, default="",
                       help="comma-separated CIDRs images may be fetched from although not public, as in build.py")
    report = commands.add_parser("report", help="print the ratings table")
    report.add_argument("db", type=Path, help="the SQLite file `serve` wrote")
    report.add_argument("--plot", type=Path, help="also write the rating distributions to this PNG file")
    return parser.parse_args(argv)


def serve_command(args: argparse.Namespace) -> None:
    # Each command imports only what it uses: the report needs neither aiohttp nor datasets.
    from builder.human_eval.app import serve
    from builder.human_eval.items import EvalSettings, prepare_items
    from builder.human_eval.store import RatingStore

    store = RatingStore(args.db)
    try:
        settings = EvalSettings(args.dataset, args.human_column, args.seed, args.items, args.references)
        prepare_items(store, settings, asdict(FetchConfig(allow_networks=args.allow_networks)))
        asyncio.run(serve(store, args.host, args.port))
    finally:
        store.close()


def report_command(args: argparse.Namespace) -> None:
    from builder.human_eval.report import format_report, plot_ratings, read_answers

    answers = read_answers(args.db)
    print(format_report(answers))
    if args.plot:
        plot_ratings(answers, args.plot)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        (serve_command if args.command == "serve" else report_command)(args)
    except HumanEvalError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

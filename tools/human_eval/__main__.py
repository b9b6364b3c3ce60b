"""`python -m tools.human_eval serve|invite|report`: rate captions blind in a browser, each rater through a
link of their own, then tabulate the answers.

Raters are invited by `serve --raters` (links printed with the address the server bound) and by `invite`,
which works while the server runs (they share the SQLite file), for a rater who joins late or lost a link.

Bad input (dataset, column, settings, database, rater name) fails with one line `error: ...` and exit code 2.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import urllib.parse
from pathlib import Path

from tools.human_eval.errors import HumanEvalError
from map_fns.fetch import FetchConfig
from map_fns.flags import ConfigError
from map_fns.net_policy import parse_networks


def networks(text: str) -> str:
    parse_networks(text)  # raises ValueError, which argparse reports
    return text


def positive_int(text: str) -> int:
    if int(text) < 1:
        raise ValueError(text)
    return int(text)


def one_rater_name(text: str) -> str:
    from tools.human_eval.raters import rater_name

    try:
        return rater_name(text)
    except HumanEvalError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def rater_names(text: str) -> list[str]:
    """Comma-separated rater names, each checked; repeats once."""
    return list(dict.fromkeys(one_rater_name(name) for name in text.split(",")))


def base_url(text: str) -> str:
    url = urllib.parse.urlsplit(text)
    if url.scheme not in ("http", "https") or not url.netloc or url.query or url.fragment:
        raise argparse.ArgumentTypeError(f"--url must be the server's address, like http://HOST:PORT, got {text!r}")
    return text.rstrip("/")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.human_eval",
                                     description="Rate captions blind in a browser (serve), each rater through a "
                                                 "link of their own (invite), then tabulate (report).")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the rating pages")
    serve.add_argument("--dataset", required=True, help="finished output folder or Hub dataset repo id")
    serve.add_argument("--db", required=True, type=Path, help="SQLite file of items and answers (made if missing)")
    serve.add_argument("--human_column", default="TEXT", help="the human-written caption column")
    serve.add_argument("--references", default="",
                       help="human captions by image URL instead (as tools.tune's --references: Hub dataset id or "
                            "local parquet/jsonl/csv; columns URL/url/coco_url/image_url and "
                            "captions/caption/sentences/TEXT/text)")
    serve.add_argument("--items", type=positive_int, default=100, help="rows to rate; two captions each")
    serve.add_argument("--seed", type=int, default=0, help="which rows: the same seed picks the same rows")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=7860, help="0: any free port")
    serve.add_argument("--allow_networks", type=networks, default="",
                       help="comma-separated CIDRs images may be fetched from although not public, as in build.py")
    serve.add_argument("--raters", type=rater_names, default=[],
                       help="comma-separated rater names: each one not invited before gets a link, printed once")
    invite = commands.add_parser("invite", help="give raters their links, also while `serve` runs")
    invite.add_argument("names", nargs="+", type=one_rater_name, metavar="NAME",
                        help="a rater's name, as the report lists it")
    invite.add_argument("--db", required=True, type=Path, help="the SQLite file `serve` uses")
    invite.add_argument("--url", type=base_url, default="http://127.0.0.1:7860",
                        help="the address raters reach the server at (what `serve` printed, or your proxy's)")
    invite.add_argument("--new_link", action="store_true",
                        help="a rater already invited gets a new link and the old one stops working; answers stay")
    report = commands.add_parser("report", help="print the ratings table")
    report.add_argument("db", type=Path, help="the SQLite file `serve` wrote")
    report.add_argument("--plot", type=Path, help="also write the rating distributions to this PNG file")
    return parser.parse_args(argv)


def serve_command(args: argparse.Namespace) -> None:
    # Each command imports only what it uses: the report needs neither aiohttp nor datasets.
    from tools.human_eval.app import serve
    from tools.human_eval.items import EvalSettings, prepare_items
    from tools.human_eval.store import RatingStore

    store = RatingStore(args.db)
    try:
        settings = EvalSettings(args.dataset, args.human_column, args.seed, args.items, args.references)
        prepare_items(store, settings, FetchConfig(allow_networks=args.allow_networks))
        asyncio.run(serve(store, args.host, args.port, args.raters))
    finally:
        store.close()


def invite_command(args: argparse.Namespace) -> None:
    from tools.human_eval.raters import invite, rating_link
    from tools.human_eval.store import open_existing

    store = open_existing(args.db)
    try:
        for name, token in invite(store, list(dict.fromkeys(args.names)), args.new_link).items():
            print(f"rating link for {name}: {rating_link(args.url, token)}")
    finally:
        store.close()


def report_command(args: argparse.Namespace) -> None:
    from tools.human_eval.report import format_report, plot_ratings, read_answers

    answers, unlinked = read_answers(args.db)
    print(format_report(answers, unlinked))
    if args.plot:
        plot_ratings(answers, args.plot)


COMMANDS = {"serve": serve_command, "invite": invite_command, "report": report_command}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        COMMANDS[args.command](args)
    except ConfigError as err:  # a HumanEvalError, or any user error the shared code it calls found
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

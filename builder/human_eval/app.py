"""The rating pages: a rater gives an id, then sees every item once, one at a time, in an order of their own,
and each answer is stored before the next item is shown.

Pages carry nothing about an item but its opaque id, caption and picture, so nothing but the caption tells
a human caption from a machine one. The database is called on the event loop thread: an answer costs one
small committed INSERT, negligible for a room of raters.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import signal
import socket
from pathlib import Path

import jinja2
from aiohttp import web

from builder.human_eval.errors import HumanEvalError
from builder.human_eval.store import KINDS, RatingStore

log = logging.getLogger(__name__)

MAX_RATER_LENGTH = 100
RATINGS = tuple(str(rating) for rating in range(6))
STORE = web.AppKey("store", RatingStore)
# Captions are untrusted text: escaped by the templates, and nothing may load or run from elsewhere.
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                               "form-action 'self'; frame-ancestors 'none'",
                    "Cache-Control": "no-store"}
TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                               undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def make_app(store: RatingStore) -> web.Application:
    app = web.Application()
    app[STORE] = store
    app.add_routes([web.get("/", start_page), web.get("/rate", rate_page, name="rate"),
                    web.post("/answer", answer), web.get("/healthz", healthz)])
    return app


def rater_order(rater: str, item_ids: list[str]) -> list[str]:
    """The items in the order `rater` sees them: a shuffle of their own, the same after any restart, so a
    row's two captions are neither next to each other nor in a fixed order."""
    return sorted(item_ids, key=lambda item_id: hashlib.sha256(f"{rater}\0{item_id}".encode()).digest())


async def start_page(request: web.Request) -> web.Response:
    return _page("start.html", max_rater_length=MAX_RATER_LENGTH)


async def rate_page(request: web.Request) -> web.Response:
    """The next item `rater` has not answered, or the page saying they are done."""
    store, rater = request.app[STORE], _rater(request.query.get("rater"))
    item_ids, answered = store.item_ids(), store.answered(rater)
    pending = [item_id for item_id in rater_order(rater, item_ids) if item_id not in answered]
    if not pending:
        return _page("done.html", rater=rater, total=len(item_ids))
    item = store.item(pending[0])
    return _page("rate.html", rater=rater, item_id=item.item_id, caption=item.caption, picture=item.thumbnail,
                 ratings=RATINGS, rated=len(answered), total=len(item_ids))


async def answer(request: web.Request) -> web.Response:
    """Store one answer, committed before the reply; anything invalid is refused and nothing is stored."""
    store, form = request.app[STORE], await request.post()
    rater, item_id, rating, guess = (_rater(form.get("rater")), form.get("item"), form.get("rating"),
                                     form.get("guess"))
    if not isinstance(item_id, str) or store.item(item_id) is None:
        raise _bad_request(f"no item {_shown(item_id)} in this evaluation")
    if rating not in RATINGS:
        raise _bad_request(f"rating must be an integer from 0 to 5, got {_shown(rating)}")
    if guess not in KINDS:
        raise _bad_request(f"guess must be 'human' or 'machine', got {_shown(guess)}")
    if not store.add_answer(rater, item_id, int(rating), guess):
        raise web.HTTPConflict(text=f"rater {rater!r} already answered item {item_id!r}; the first answer counts\n")
    raise web.HTTPSeeOther(request.app.router["rate"].url_for().with_query(rater=rater))


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def serve(store: RatingStore, host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM. The socket is bound here, so port 0 picks a free one; the line
    `serving on URL` goes to stdout once it accepts connections."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as err:
        raise HumanEvalError(f"cannot listen on {host} port {port}: {err}") from err
    runner = web.AppRunner(make_app(store))
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        bound_host, bound_port = sock.getsockname()[:2]
        netloc = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        print(f"serving on http://{netloc}", flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping: every acknowledged answer is in %s", store.path)
    finally:
        await runner.cleanup()


def _rater(value: object) -> str:
    rater = value.strip() if isinstance(value, str) else ""
    if not rater:
        raise _bad_request("rater id is missing or blank")
    if len(rater) > MAX_RATER_LENGTH:
        raise _bad_request(f"rater id must be at most {MAX_RATER_LENGTH} characters, got {len(rater)}")
    return rater


def _shown(value: object) -> str:
    """A form value as an error message quotes it."""
    return "nothing" if value is None else repr(value if isinstance(value, str) else type(value).__name__)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message + "\n")


def _page(template: str, **context) -> web.Response:
    return web.Response(text=TEMPLATES.get_template(template).render(**context), content_type="text/html",
                        headers=SECURITY_HEADERS)

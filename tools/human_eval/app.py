"""The rating pages: a rater opens their link (see `raters`), then sees every item once, one at a time, in an
order of their own, and each answer is stored before the next item is shown. A missing or unknown token is
refused (403), and so is any POST a page of another origin sent (see `same_origin`), before anything is read.

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
from aiohttp.abc import AbstractAccessLogger

from tools.human_eval.errors import HumanEvalError
from tools.human_eval.raters import invite_newcomers, rating_link, token_hash
from tools.human_eval.same_origin import refuse_cross_origin
from tools.human_eval.store import KINDS, Rater, RatingStore

log = logging.getLogger(__name__)

RATINGS = tuple(str(rating) for rating in range(6))
STORE = web.AppKey("store", RatingStore)
# Captions are untrusted text: escaped by the templates, and nothing may load or run from elsewhere. The
# address holds the rater's token: never cached, never sent to another site as Referer. Not "no-referrer":
# under it browsers send `Origin: null` with the form's own POST, which `same_origin` must refuse.
SECURITY_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                               "form-action 'self'; frame-ancestors 'none'",
                    "Cache-Control": "no-store", "Referrer-Policy": "same-origin"}
TEMPLATES = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent), autoescape=True,
                               undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def make_app(store: RatingStore) -> web.Application:
    app = web.Application(middlewares=[refuse_cross_origin])
    app[STORE] = store
    app.add_routes([web.get("/", start_page), web.get("/rate", rate_page, name="rate"),
                    web.post("/answer", answer), web.get("/healthz", healthz)])
    return app


def rater_order(rater: str, item_ids: list[str]) -> list[str]:
    """The items in the order `rater` sees them: a shuffle of their own, the same after any restart, so a
    row's two captions are neither next to each other nor in a fixed order."""
    return sorted(item_ids, key=lambda item_id: hashlib.sha256(f"{rater}\0{item_id}".encode()).digest())


async def start_page(request: web.Request) -> web.Response:
    """Where a rating link leads: what to do, and a button to the first item not answered yet."""
    token = request.query.get("token")
    return _page("start.html", rater=_rater(request.app[STORE], token).name, token=token)


async def rate_page(request: web.Request) -> web.Response:
    """The next item the link's rater has not answered, or the page saying they are done."""
    store, token = request.app[STORE], request.query.get("token")
    rater = _rater(store, token)
    item_ids, answered = store.item_ids(), store.answered(rater)
    pending = [item_id for item_id in rater_order(rater.name, item_ids) if item_id not in answered]
    if not pending:
        return _page("done.html", rater=rater.name, total=len(item_ids))
    item = store.item(pending[0])
    return _page("rate.html", rater=rater.name, token=token, item_id=item.item_id, caption=item.caption,
                 picture=item.thumbnail, ratings=RATINGS, rated=len(answered), total=len(item_ids))


async def answer(request: web.Request) -> web.Response:
    """Store one answer, committed before the reply; anything invalid is refused and nothing is stored."""
    store, form = request.app[STORE], await request.post()
    token, item_id, rating, guess = form.get("token"), form.get("item"), form.get("rating"), form.get("guess")
    rater = _rater(store, token)
    if not isinstance(item_id, str) or store.item(item_id) is None:
        raise _bad_request(f"no item {_shown(item_id)} in this evaluation")
    if rating not in RATINGS:
        raise _bad_request(f"rating must be an integer from 0 to 5, got {_shown(rating)}")
    if guess not in KINDS:
        raise _bad_request(f"guess must be 'human' or 'machine', got {_shown(guess)}")
    if not store.add_answer(rater, item_id, int(rating), guess):
        raise web.HTTPConflict(text=f"rater {rater.name!r} already answered item {item_id!r}; the first answer "
                                    "counts\n")
    raise web.HTTPSeeOther(request.app.router["rate"].url_for().with_query(token=token))


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


class PathOnlyAccessLogger(AbstractAccessLogger):
    """One line per request without the query string or Referer, which hold raters' tokens."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %s %d %.3fs", request.remote, request.method, request.path, response.status, time)


async def serve(store: RatingStore, host: str, port: int, raters: list[str]) -> None:
    """Serve until SIGINT or SIGTERM. The socket is bound here, so port 0 picks a free one. Once it accepts
    connections, stdout gets a line `rating link for NAME: URL` for each of `raters` not invited before,
    then `serving on URL`."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as err:
        raise HumanEvalError(f"cannot listen on {host} port {port}: {err}") from err
    runner = web.AppRunner(make_app(store), access_log_class=PathOnlyAccessLogger)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        bound_host, bound_port = sock.getsockname()[:2]
        netloc = f"[{bound_host}]:{bound_port}" if ":" in bound_host else f"{bound_host}:{bound_port}"
        for name, token in invite_newcomers(store, raters).items():
            print(f"rating link for {name}: {rating_link(f'http://{netloc}', token)}", flush=True)
        if not store.rater_names():
            log.warning("no rater has a link yet: `python -m tools.human_eval invite --db %s NAME` gives one",
                        store.path)
        print(f"serving on http://{netloc}", flush=True)
        stop = asyncio.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            asyncio.get_running_loop().add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("stopping: every acknowledged answer is in %s", store.path)
    finally:
        await runner.cleanup()


def _rater(store: RatingStore, token: object) -> Rater:
    """The rater whose link holds `token`; 403 for a missing or unknown token."""
    if not isinstance(token, str) or not token:
        raise web.HTTPForbidden(text="no rater token: open the rating link you were given\n")
    rater = store.rater(token_hash(token))
    if rater is None:
        raise web.HTTPForbidden(text="unknown rater token: this is not a valid rating link; ask whoever runs the "
                                     "evaluation for yours\n")
    return rater


def _shown(value: object) -> str:
    """A form value as an error message quotes it."""
    return "nothing" if value is None else repr(value if isinstance(value, str) else type(value).__name__)


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=message + "\n")


def _page(template: str, **context) -> web.Response:
    return web.Response(text=TEMPLATES.get_template(template).render(**context), content_type="text/html",
                        headers=SECURITY_HEADERS)

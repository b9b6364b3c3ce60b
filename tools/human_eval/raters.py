"""Who may rate: the person running the evaluation invites raters by name, and each gets a link holding a
secret token; pages and answers are tied to the token, never to a name a visitor types.

A token is 32 random bytes (`secrets.token_urlsafe`), so it cannot be guessed; the database keeps only its
SHA-256, so reading the database does not let anyone answer as a rater. The token travels in the query
string and the form body, which the server's access log leaves out (see `app.PathOnlyAccessLogger`).
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import urllib.parse

from tools.human_eval.errors import HumanEvalError
from tools.human_eval.store import RatingStore

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 100
TOKEN_BYTES = 32


def rater_name(text: str) -> str:
    """`text` as a rater name: printable, not blank, no commas (`--raters` is comma-separated)."""
    name = text.strip()
    if not name:
        raise HumanEvalError("a rater name is blank")
    if len(name) > MAX_NAME_LENGTH:
        raise HumanEvalError(f"rater name {name[:20]!r}... is {len(name)} characters, at most {MAX_NAME_LENGTH}")
    if "," in name or not name.isprintable():
        raise HumanEvalError(f"rater name {name!r} holds a comma or an unprintable character")
    return name


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def invite(store: RatingStore, names: list[str], new_link: bool = False) -> dict[str, str]:
    """A fresh token for each of `names` (name -> token), stored hashed; an already invited name is refused,
    or with `new_link` gets the new token in place of the old one."""
    tokens = {name: secrets.token_urlsafe(TOKEN_BYTES) for name in names}
    store.add_raters({name: token_hash(token) for name, token in tokens.items()}, replace=new_link)
    return tokens


def invite_newcomers(store: RatingStore, names: list[str]) -> dict[str, str]:
    """`invite` the names not invited yet: a restarted `serve --raters` keeps the links it gave before (their
    tokens are not stored, so they cannot be shown again)."""
    known = store.rater_names()
    for name in names:
        if name in known:
            log.info("rater %r already has a link (invite --new_link gives them another)", name)
    return invite(store, [name for name in names if name not in known])


def rating_link(base_url: str, token: str) -> str:
    """The start page of the app at `base_url`, holding the rater's token."""
    return f"{base_url.rstrip('/')}/?{urllib.parse.urlencode({'token': token})}"

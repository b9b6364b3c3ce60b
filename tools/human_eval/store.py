"""The ratings database: what is rated (items and the settings that chose them) and every answer, in SQLite.

WAL mode with synchronous=FULL and a commit per answer, before the reply: an answer a rater saw
acknowledged survives the server being killed, or the machine losing power. One answer per rater and item
is the table's primary key, so a repeated answer is refused by the database itself.

Raters are invited by name; each holds a secret link whose token is stored only as its SHA-256 (the token is
256 random bits, so the hash needs no salt or slow KDF): whoever reads the database cannot answer as a rater.
Answers belong to a rater row, never to a typed name. Databases made before rater links kept answers under
typed names in a table `answers`; it is left as it was and never counted, as anyone could have sent them.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tools.human_eval.errors import HumanEvalError

HUMAN, MACHINE = "human", "machine"
KINDS = (HUMAN, MACHINE)

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    item_id TEXT PRIMARY KEY,
    row_index INTEGER NOT NULL,
    url TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('human', 'machine')),
    caption TEXT NOT NULL,
    thumbnail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS raters (
    rater_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_sha256 TEXT NOT NULL UNIQUE,
    invited_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ratings (
    rater_id INTEGER NOT NULL REFERENCES raters (rater_id),
    item_id TEXT NOT NULL REFERENCES items (item_id),
    rating INTEGER NOT NULL CHECK (rating BETWEEN 0 AND 5),
    guess TEXT NOT NULL CHECK (guess IN ('human', 'machine')),
    answered_at TEXT NOT NULL,
    PRIMARY KEY (rater_id, item_id)
);
"""
UNLINKED_ANSWERS = "answers"  # the table of answers under typed names that databases made before rater links hold


@dataclass(frozen=True)
class Item:
    """One image with one caption; `item_id` is opaque, the only thing about it a rater's page carries."""

    item_id: str
    row_index: int  # in the dataset's train split
    url: str | None
    kind: str  # HUMAN or MACHINE: never shown
    caption: str
    thumbnail: str  # JPEG data URI


@dataclass(frozen=True)
class Rater:
    rater_id: int
    name: str


@dataclass(frozen=True)
class Answer:
    rater: str
    kind: str  # of the item answered
    rating: int
    guess: str


class RatingStore:
    """One connection to the database at `path` (created if missing), used from one thread."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            self.connection = sqlite3.connect(path, isolation_level=None)  # autocommit; explicit transactions
            self.connection.execute("PRAGMA journal_mode = WAL")
            self.connection.execute("PRAGMA synchronous = FULL")
            self.connection.execute("PRAGMA foreign_keys = ON")
            self.connection.executescript(SCHEMA)
        except sqlite3.DatabaseError as err:
            raise HumanEvalError(f"{path} is not a usable ratings database: {err}") from err

    def close(self) -> None:
        self.connection.close()

    def meta(self) -> dict[str, str]:
        """The settings the items were chosen with; empty while no items are stored."""
        return dict(self.connection.execute("SELECT key, value FROM meta"))

    def create(self, meta: dict[str, str], items: list[Item]) -> None:
        """Store the items and their settings in one transaction: a crash leaves all of them or none."""
        with self.connection:
            self.connection.execute("BEGIN IMMEDIATE")
            self.connection.executemany("INSERT INTO meta VALUES (?, ?)", meta.items())
            self.connection.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)",
                                        [(item.item_id, item.row_index, item.url, item.kind, item.caption,
                                          item.thumbnail) for item in items])

    def item_ids(self) -> list[str]:
        return [item_id for item_id, in self.connection.execute("SELECT item_id FROM items ORDER BY item_id")]

    def item(self, item_id: str) -> Item | None:
        row = self.connection.execute("SELECT item_id, row_index, url, kind, caption, thumbnail FROM items "
                                      "WHERE item_id = ?", (item_id,)).fetchone()
        return Item(*row) if row else None

    def rater_names(self) -> set[str]:
        return {name for name, in self.connection.execute("SELECT name FROM raters")}

    def add_raters(self, token_hashes: dict[str, str], replace: bool = False) -> None:
        """Store raters (name -> SHA-256 of their token) in one transaction, all or none. A name already
        invited is refused, or with `replace` gets the new token: its old link stops working, its answers stay."""
        now = _now()
        with self.connection:
            self.connection.execute("BEGIN IMMEDIATE")
            taken = sorted(self.rater_names() & token_hashes.keys())
            if taken and not replace:
                raise HumanEvalError(f"rater {taken[0]!r} already has a link; invite --new_link gives them another "
                                     "(the old one stops working)")
            self.connection.executemany(
                "INSERT INTO raters (name, token_sha256, invited_at) VALUES (?, ?, ?) ON CONFLICT (name) "
                "DO UPDATE SET token_sha256 = excluded.token_sha256, invited_at = excluded.invited_at",
                [(name, token_hash, now) for name, token_hash in token_hashes.items()])

    def rater(self, token_hash: str) -> Rater | None:
        """The rater holding the token of this SHA-256, if any."""
        row = self.connection.execute("SELECT rater_id, name FROM raters WHERE token_sha256 = ?",
                                      (token_hash,)).fetchone()
        return Rater(*row) if row else None

    def answered(self, rater: Rater) -> set[str]:
        """The items `rater` has answered."""
        return {item_id for item_id, in self.connection.execute("SELECT item_id FROM ratings WHERE rater_id = ?",
                                                                (rater.rater_id,))}

    def add_answer(self, rater: Rater, item_id: str, rating: int, guess: str) -> bool:
        """Store and commit one answer; False (nothing stored) when `rater` already answered `item_id`."""
        try:
            with self.connection:
                self.connection.execute("BEGIN IMMEDIATE")
                self.connection.execute("INSERT INTO ratings VALUES (?, ?, ?, ?, ?)",
                                        (rater.rater_id, item_id, rating, guess, _now()))
        except sqlite3.IntegrityError as err:
            if "UNIQUE" in str(err):
                return False
            raise
        return True

    def answers(self) -> list[Answer]:
        """Every answer of an invited rater with the kind of the item answered, in the order given."""
        return [Answer(*row) for row in self.connection.execute(
            "SELECT name, kind, rating, guess FROM ratings JOIN raters USING (rater_id) JOIN items USING (item_id) "
            "ORDER BY answered_at")]

    def unlinked_answers(self) -> int:
        """How many answers an older version stored under typed rater names: never counted, only reported."""
        if not self.connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                       (UNLINKED_ANSWERS,)).fetchone():
            return 0
        return self.connection.execute(f"SELECT count(*) FROM {UNLINKED_ANSWERS}").fetchone()[0]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def open_existing(path: Path) -> RatingStore:
    """The database at `path`, refusing to create one: `report` and `invite` work on what `serve` made."""
    if not Path(path).is_file():
        raise HumanEvalError(f"no ratings database at {path}")
    return RatingStore(path)

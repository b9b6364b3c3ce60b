"""The ratings database: what is rated (items and the settings that chose them) and every answer, in SQLite.

WAL mode with synchronous=FULL and a commit per answer, before the reply: an answer a rater saw
acknowledged survives the server being killed, or the machine losing power. One answer per rater and item
is the table's primary key, so a repeated answer is refused by the database itself.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from builder.human_eval.errors import HumanEvalError

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
CREATE TABLE IF NOT EXISTS answers (
    rater TEXT NOT NULL,
    item_id TEXT NOT NULL REFERENCES items (item_id),
    rating INTEGER NOT NULL CHECK (rating BETWEEN 0 AND 5),
    guess TEXT NOT NULL CHECK (guess IN ('human', 'machine')),
    answered_at TEXT NOT NULL,
    PRIMARY KEY (rater, item_id)
);
"""


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

    def answered(self, rater: str) -> set[str]:
        """The items `rater` has answered."""
        return {item_id for item_id, in self.connection.execute("SELECT item_id FROM answers WHERE rater = ?",
                                                                (rater,))}

    def add_answer(self, rater: str, item_id: str, rating: int, guess: str) -> bool:
        """Store and commit one answer; False (nothing stored) when `rater` already answered `item_id`."""
        try:
            with self.connection:
                self.connection.execute("BEGIN IMMEDIATE")
                self.connection.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?)",
                                        (rater, item_id, rating, guess, datetime.now(timezone.utc).isoformat()))
        except sqlite3.IntegrityError as err:
            if "UNIQUE" in str(err):
                return False
            raise
        return True

    def answers(self) -> list[Answer]:
        """Every answer with the kind of the item answered, in the order given."""
        return [Answer(*row) for row in self.connection.execute(
            "SELECT rater, kind, rating, guess FROM answers JOIN items USING (item_id) ORDER BY answered_at")]


def open_existing(path: Path) -> RatingStore:
    """The database at `path`, refusing to create one: the report reads what `serve` wrote."""
    if not Path(path).is_file():
        raise HumanEvalError(f"no ratings database at {path}")
    return RatingStore(path)

"""`python -m tools.human_eval`: the real server in a subprocess on loopback, rated over HTTP through raters'
links, killed with SIGKILL and restarted on the same database; forged and cross-origin answers refused; items
chosen from a real output-like folder; the report's numbers against ones computed by hand."""

import base64
import html
import io
import os
import re
import secrets
import select
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import datasets
import markupsafe
import pytest
from PIL import Image

from builder.cli import failed
from tools.human_eval.__main__ import main
from tools.human_eval.errors import HumanEvalError
from tools.human_eval.items import DISPLAY_SIDE, EvalSettings, choose_items, prepare_items
from tools.human_eval.raters import invite, token_hash
from tools.human_eval.rows import pick_rows
from tools.human_eval.store import HUMAN, MACHINE, Item, RatingStore
from map_fns.fetch import FetchConfig

REPO = Path(__file__).resolve().parents[2]
HOSTILE = '<script>document.title="pwned"</script> & <b>bold</b>'
CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: "data/train-*"
---
"""
ROWS = [  # (TEXT, top_caption, status, image size); rows 2, 3 and 4 are not usable
    ("a red square on a wall", "a red square", "ok", (40, 30)),
    (HOSTILE, "a green field", "ok", (900, 600)),
    ("never captioned", None, "fetch_error", (40, 30)),
    ("   ", "a blue sky", "ok", (40, 30)),
    (None, "a yellow sun", "ok", (40, 30)),
    ("two cats", "two cats on a sofa", "ok", (40, 30)),
    ("a bowl of soup", "a bowl of hot soup", "ok", (40, 30)),
    ("kids at the beach", "children playing on a beach", "ok", (40, 30)),
    ("an old bike", "a rusty bicycle", "ok", (40, 30)),
]
USABLE = [0, 1, 5, 6, 7, 8]
FEATURES = datasets.Features({"URL": datasets.Value("string"), "TEXT": datasets.Value("string"),
                              "top_caption": datasets.Value("string"), "status": datasets.Value("string"),
                              "image": datasets.Image()})
ITEM_FIELD = re.compile(r'name="item" value="([^"]+)"')
CAPTION = re.compile(r'<p class="caption">(.*?)</p>', re.S)
PICTURE = re.compile(r'src="(data:image/jpeg;base64,[^"]+)"')
PROGRESS = re.compile(r'<p class="progress">(.*?)</p>')
LINK = re.compile(r"rating link for (.+): (http://\S+/\?token=(\S+))")
EVIL = "http://evil.invalid"


def _png(index: int, size: tuple[int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (index * 25, 255 - index * 25, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def _write_output(folder: Path, rows: list[dict]) -> Path:
    """A folder `load_dataset(folder, split="train")` reads as a build output: data/train-*.parquet and a card."""
    (folder / "data").mkdir(parents=True)
    features = datasets.Features({name: FEATURES[name] for name in rows[0]})
    datasets.Dataset.from_list(rows, features=features).to_parquet(folder / "data" / "train-00000-00000.parquet")
    (folder / "README.md").write_text(CARD)
    return folder


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    """Nine rows with embedded PNGs: six usable, one not ok, one blank and one null human caption."""
    rows = [{"URL": f"http://example.invalid/{i}.png", "TEXT": text, "top_caption": caption, "status": status,
             "image": {"bytes": _png(i, size), "path": None}} for i, (text, caption, status, size) in enumerate(ROWS)]
    return _write_output(tmp_path_factory.mktemp("he-output"), rows)


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


# ---- talking to the server ----

class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args):
        return None  # the test sees the 303 itself


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)  # loopback: never a proxy


@dataclass
class RatePage:
    html: str
    item_id: str | None  # None: the "all done" page
    caption: str | None
    progress: str | None


@dataclass
class Server:
    base: str
    proc: subprocess.Popen
    links: dict[str, str]  # rater name -> token, from the links `serve --raters` printed

    def request(self, path: str, form: dict | None = None, headers: dict | None = None) -> tuple[int, str, dict]:
        data = urllib.parse.urlencode(form).encode() if form is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=headers or {})
        try:
            with OPENER.open(request, timeout=10) as response:
                return response.status, response.read().decode(), dict(response.headers)
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode(), dict(err.headers)

    def browser_headers(self, token: str) -> dict[str, str]:
        """What a browser sends with the rate page's form: it posts to its own origin."""
        return {"Origin": self.base, "Sec-Fetch-Site": "same-origin", "Referer": f"{self.base}/rate?token={token}"}

    def rate_page(self, token: str) -> RatePage:
        status, text, _ = self.request("/rate?" + urllib.parse.urlencode({"token": token}))
        assert status == 200, text
        item, caption, progress = ITEM_FIELD.search(text), CAPTION.search(text), PROGRESS.search(text)
        return RatePage(text, item and item[1], caption and html.unescape(caption[1]), progress and progress[1])

    def answer(self, token: str, item: str, rating: str = "3", guess: str = HUMAN,
               headers: dict | None = None) -> tuple[int, str, dict]:
        """POST the rate page's form; from the page itself unless `headers` say otherwise."""
        return self.request("/answer", {"token": token, "item": item, "rating": rating, "guess": guess},
                            self.browser_headers(token) if headers is None else headers)


def _wait_for_url(proc: subprocess.Popen, log: Path, seconds: float = 45) -> tuple[str, dict[str, str]]:
    """The address of the 'serving on' line, and name -> token of the link lines before it. Read from the
    pipe's descriptor: the lines come at once, and a buffered reader would hide all but the first from select."""
    deadline, links, pending = time.monotonic() + seconds, {}, b""
    while time.monotonic() < deadline:
        if not select.select([proc.stdout], [], [], 0.2)[0]:
            continue
        chunk = os.read(proc.stdout.fileno(), 1 << 16)
        if not chunk:  # the server exited
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in map(bytes.decode, lines):
            if line.startswith("serving on "):
                base = line.split()[-1]
                assert all(url == f"{base}/?token={token}" for url, token in links.values()), links
                return base, {name: token for name, (_, token) in links.items()}
            if link := LINK.fullmatch(line):
                links[link[1]] = link[2], link[3]
    raise AssertionError(f"no 'serving on' line (exit code {proc.poll()}): {log.read_text()[-3000:]}")


@contextmanager
def serving(env: dict, log: Path, *flags: str) -> Iterator[Server]:
    """`python -m tools.human_eval serve *flags --port 0`, killed at the end whatever happens."""
    with open(log, "a") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tools.human_eval", "serve", *flags, "--port", "0"],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=stderr)
    try:
        base, links = _wait_for_url(proc, log)
        yield Server(base, proc, links)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()


def _db_items(db: Path) -> dict[str, tuple[int, str, str, str]]:
    """item id -> (row, kind, caption, picture), read with sqlite3 directly."""
    with sqlite3.connect(db) as connection:
        return {item_id: rest for item_id, *rest in
                connection.execute("SELECT item_id, row_index, kind, caption, thumbnail FROM items")}


def _answer_count(db: Path) -> int:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT count(*) FROM ratings").fetchone()[0]


def _report(db: Path, capsys) -> str:
    assert main(["report", str(db)]) == 0
    return capsys.readouterr().out


def _blinded(page: RatePage, picture: str) -> str:
    """The page with what differs between items taken out: its id, caption, picture and progress line."""
    text = page.html.replace(page.item_id, "ITEM").replace(picture, "PICTURE").replace(page.progress, "PROGRESS")
    return text.replace(str(markupsafe.escape(page.caption)), "CAPTION")  # escaped as the templates do


# ---- the tests ----

@pytest.mark.timeout(90)
def test_blind_rating_round_survives_sigkill(output, env, tmp_path, capsys):
    db, log = tmp_path / "ratings.sqlite", tmp_path / "serve.log"
    flags = ("--dataset", str(output), "--db", str(db), "--items", "10", "--raters", "alice,bob")
    with serving(env, log, *flags) as server:
        assert server.request("/healthz")[:2] == (200, "ok")
        alice, bob = server.links["alice"], server.links["bob"]
        assert sorted(server.links) == ["alice", "bob"] and alice != bob
        status, start, headers = server.request("/?" + urllib.parse.urlencode({"token": alice}))
        assert status == 200 and "alice" in start and f'name="token" value="{alice}"' in start
        assert headers["Referrer-Policy"] == "same-origin"  # the token never goes to another site as Referer
        items = _db_items(db)
        assert len(items) == 12 and sorted(row for row, *_ in items.values()) == sorted(USABLE * 2)
        for row, kind, caption, picture in items.values():
            text, top_caption, _, size = ROWS[row]
            assert caption == (text if kind == HUMAN else top_caption)
            shown = Image.open(io.BytesIO(base64.b64decode(picture.split(",", 1)[1])))
            assert shown.format == "JPEG" and max(shown.size) == min(max(size), DISPLAY_SIDE)

        seen, pages = [], []
        for rated in range(5):
            page = server.rate_page(alice)
            assert page.progress == f"alice: {rated} of 12 rated" and page.item_id not in seen
            pages.append(page)
            status, _, headers = server.answer(alice, page.item_id, str(rated), HUMAN if rated % 2 else MACHINE)
            assert status == 303 and headers["Location"] == f"/rate?token={alice}"
            seen.append(page.item_id)
        next_item = server.rate_page(alice).item_id

        first = seen[0]
        refused = [({"rating": rating}, repr(rating)) for rating in ("6", "-1", "abc", "", "2.5")] + [
            ({"guess": "robot"}, "'robot'"), ({"item": "no-such-item"}, "'no-such-item'")]
        for change, named in refused:
            status, text, _ = server.request("/answer", {"token": alice, "item": next_item, "rating": "4",
                                                         "guess": HUMAN, **change}, server.browser_headers(alice))
            assert status == 400 and named in text and text.count("\n") == 1, (change, text)
        for path in ("/rate", "/", "/rate?token="):
            status, text, _ = server.request(path)
            assert status == 403 and "no rater token" in text and text.count("\n") == 1, (path, text)
        status, text, _ = server.answer(alice, first, "5")
        assert status == 409 and repr(first) in text
        assert _answer_count(db) == 5

        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)

    with serving(env, log, *flags) as server:
        assert server.links == {}  # both were invited before: their links still hold, none is printed again
        page = server.rate_page(alice)
        assert page.item_id == next_item and page.progress == "alice: 5 of 12 rated"
        assert "answers per rater: alice 5" in _report(db, capsys)
        with sqlite3.connect(db) as connection:
            assert [rating for rating, in connection.execute(
                "SELECT rating FROM ratings JOIN raters USING (rater_id) WHERE name = 'alice' "
                "ORDER BY answered_at")] == [0, 1, 2, 3, 4]

        while page.item_id is not None:
            pages.append(page)
            assert server.answer(alice, page.item_id)[0] == 303
            seen.append(page.item_id)
            page = server.rate_page(alice)
        assert "All done" in page.html and sorted(seen) == sorted(items)
        assert all(page.caption == items[page.item_id][2] for page in pages)
        # Nothing but the caption and the picture tells one item, human or machine, from another...
        assert len({_blinded(page, items[page.item_id][3]) for page in pages}) == 1
        # ...and the hostile caption came out as text.
        assert sum(str(markupsafe.escape(HOSTILE)) in page.html for page in pages) == 1
        assert not any(HOSTILE in page.html or "<script" in page.html for page in pages)
        bob_seen = []
        while (page := server.rate_page(bob)).item_id is not None:
            assert server.answer(bob, page.item_id)[0] == 303
            bob_seen.append(page.item_id)
        assert sorted(bob_seen) == sorted(seen) and bob_seen != seen  # every item once, in an order of bob's own

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=10) == 0
    assert _answer_count(db) == 24
    # The tokens were printed once and are kept nowhere: not in the database, not in the server's log.
    stored = b"".join(path.read_bytes() for path in tmp_path.glob("ratings.sqlite*"))
    assert b"alice" in stored and log.read_text().count("GET /rate") > 20
    assert not any(token.encode() in stored for token in (alice, bob))
    assert not any(token in log.read_text() for token in (alice, bob))


@pytest.mark.timeout(90)
def test_forged_and_cross_origin_answers_are_refused_and_not_counted(output, env, tmp_path, capsys):
    db = tmp_path / "ratings.sqlite"
    with serving(env, tmp_path / "serve.log", "--dataset", str(output), "--db", str(db), "--items", "10",
                 "--raters", "alice") as server:
        alice = server.links["alice"]
        for rated in range(4):
            page = server.rate_page(alice)
            assert server.answer(alice, page.item_id, str(rated + 1), MACHINE if rated % 2 else HUMAN)[0] == 303
        before = _report(db, capsys)
        target = server.rate_page(alice).item_id
        answer = {"item": target, "rating": "5", "guess": HUMAN}

        forged = [  # (form, headers, what the refusal says)
            ({"rater": "alice", **answer}, None, "no rater token"),  # the old form: a typed name
            ({"token": "", **answer}, None, "no rater token"),
            ({"token": "alice", **answer}, None, "unknown rater token"),  # a guessed name as the token
            ({"token": secrets.token_urlsafe(32), **answer}, None, "unknown rater token"),
            ({"token": alice + "x", **answer}, None, "unknown rater token"),
            # alice's own token, sent by a page of another origin: a leaked link must not let it answer
            ({"token": alice, **answer}, {"Origin": EVIL}, f"Origin: {EVIL}"),
            ({"token": alice, **answer}, {"Origin": "null"}, "Origin: null"),  # sandboxed frame, file:
            ({"token": alice, **answer}, {"Referer": EVIL + "/page"}, f"Referer: {EVIL}/page"),  # no Origin
            ({"token": alice, **answer}, {"Origin": server.base, "Sec-Fetch-Site": "cross-site"},
             "Sec-Fetch-Site: cross-site"),
            ({"token": alice, **answer}, {"Sec-Fetch-Site": "same-site"}, "Sec-Fetch-Site: same-site"),
            ({"token": alice, **answer}, {"Origin": server.base.replace("127.0.0.1", "localhost")}, "Origin: "),
            ({"token": alice, **answer}, {"Origin": "http://127.0.0.1:1"}, "Origin: http://127.0.0.1:1"),  # a port
        ]
        for form, headers, named in forged:
            status, text, _ = server.request("/answer", form, headers or server.browser_headers(form.get("token")))
            assert status == 403 and named in text and text.count("\n") == 1, (form, headers, text)
        for _ in range(200):  # a crowd of made-up raters, each claiming every caption is human's
            status, _, _ = server.answer(secrets.token_urlsafe(32), target, "5", HUMAN)
            assert status == 403
        for path in ("/rate?token=alice", f"/?token={secrets.token_urlsafe(32)}"):
            status, text, _ = server.request(path)
            assert status == 403 and "unknown rater token" in text and target not in text
        assert _answer_count(db) == 4 and _report(db, capsys) == before  # nothing forged was stored or counted

        status, _, _ = server.answer(alice, target, "5", HUMAN)  # from alice's own page: the browser's headers
        assert status == 303 and server.rate_page(alice).progress == "alice: 5 of 12 rated"
        status, _, _ = server.answer(alice, server.rate_page(alice).item_id, headers={})  # a script: no page
        assert status == 303 and "answers per rater: alice 6" in _report(db, capsys)


@pytest.mark.timeout(90)
def test_invite_gives_links_while_the_server_runs(output, env, tmp_path, capsys):
    db = tmp_path / "ratings.sqlite"
    with serving(env, tmp_path / "serve.log", "--dataset", str(output), "--db", str(db), "--items", "10",
                 "--raters", "alice") as server:
        alice = server.links["alice"]

        def invited(*argv: str) -> dict[str, str]:
            assert main(["invite", "--db", str(db), "--url", server.base + "/", *argv]) == 0
            links = [LINK.fullmatch(line) for line in capsys.readouterr().out.splitlines()]
            assert all(link[2] == f"{server.base}/?token={link[3]}" for link in links)
            return {link[1]: link[3] for link in links}

        carol = invited("carol")["carol"]  # the running server knows her at once: it reads the same database
        assert server.rate_page(carol).progress == "carol: 0 of 12 rated"
        assert server.answer(carol, server.rate_page(carol).item_id)[0] == 303
        assert server.answer(alice, server.rate_page(alice).item_id)[0] == 303

        assert main(["invite", "--db", str(db), "dave", "alice"]) == 2  # all or none
        error = capsys.readouterr().err.strip()
        assert error.startswith("error: rater 'alice' already has a link") and "--new_link" in error
        assert server.rate_page(alice).progress == "alice: 1 of 12 rated"  # her link still works
        assert server.request("/?token=" + urllib.parse.quote(alice))[0] == 200
        for name, named in (("eve,frank", "'eve,frank' holds a comma"), (" ", "a rater name is blank")):
            with pytest.raises(SystemExit) as exit:  # argparse's one-line error
                main(["invite", "--db", str(db), name])
            assert exit.value.code == 2 and named in capsys.readouterr().err
        with sqlite3.connect(db) as connection:
            assert sorted(name for name, in connection.execute("SELECT name FROM raters")) == ["alice", "carol"]

        new_alice = invited("--new_link", "alice")["alice"]  # she lost her link: the old one stops working
        assert server.request("/rate?token=" + urllib.parse.quote(alice))[0] == 403
        assert server.answer(alice, server.rate_page(new_alice).item_id)[0] == 403
        assert server.rate_page(new_alice).progress == "alice: 1 of 12 rated"  # her answers stay hers
    assert "answers per rater: alice 1, carol 1" in _report(db, capsys)
    assert main(["invite", "--db", str(tmp_path / "typo.sqlite"), "alice"]) == 2
    assert "no ratings database at" in capsys.readouterr().err and not (tmp_path / "typo.sqlite").exists()


LEGACY_ANSWERS = """CREATE TABLE answers (rater TEXT NOT NULL, item_id TEXT NOT NULL REFERENCES items (item_id),
    rating INTEGER NOT NULL, guess TEXT NOT NULL, answered_at TEXT NOT NULL, PRIMARY KEY (rater, item_id))"""


@pytest.mark.timeout(90)
def test_answers_an_older_version_stored_under_typed_names_are_not_counted(output, env, tmp_path, capsys):
    db = tmp_path / "ratings.sqlite"
    store = RatingStore(db)
    prepare_items(store, EvalSettings(str(output), "TEXT", 0, 10), FetchConfig())
    store.close()
    with sqlite3.connect(db) as connection:  # what the version without links left: anyone could type 'alice'
        connection.execute(LEGACY_ANSWERS)
        connection.executemany("INSERT INTO answers VALUES ('alice', ?, 5, 'human', '2020-01-01')",
                               [(item_id,) for item_id in sorted(_db_items(db))[:3]])
    assert main(["report", str(db)]) == 2
    error = capsys.readouterr().err
    assert "holds no answers from a rater's link yet" in error and "not counted: 3 answers" in error

    with serving(env, tmp_path / "serve.log", "--dataset", str(output), "--db", str(db), "--items", "10",
                 "--raters", "alice") as server:
        alice = server.links["alice"]
        page = server.rate_page(alice)  # the new alice starts afresh: the typed name's answers are not hers
        assert page.progress == "alice: 0 of 12 rated"
        assert server.answer(alice, page.item_id, "1", MACHINE)[0] == 303
    report = _report(db, capsys)
    table = _table(report)  # the typed name's three answers all said human, alice's one machine
    assert int(table["human captions"][0]) + int(table["machine captions"][0]) == 1
    assert table["captions believed human"][0] == "0" and table["captions believed machine"][:2] == ("1", "1.00")
    assert "answers per rater: alice 1" in report and "not counted: 3 answers" in report


def test_changed_settings_are_refused(output, tmp_path, capsys):
    db = tmp_path / "ratings.sqlite"
    store = RatingStore(db)
    prepare_items(store, EvalSettings(str(output), "TEXT", 0, 4), FetchConfig())
    store.close()
    assert sorted({row for row, *_ in _db_items(db).values()}) == pick_rows(USABLE, 4, 0)
    for flag, value in (("--seed", "1"), ("--items", "5"), ("--human_column", "top_caption"),
                        ("--dataset", str(tmp_path.resolve()))):
        settings = {"--dataset": str(output), "--seed": "0", "--items": "4", "--human_column": "TEXT", flag: value}
        argv = ["serve", "--db", str(db), *(part for pair in settings.items() for part in pair)]
        assert main(argv) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("error: ") and f"was made with {flag} " in error and repr(value) in error


@pytest.mark.parametrize(("human_column", "rows", "named"), [
    ("alt_text", None, "'alt_text'"),
    ("TEXT", [{"URL": "http://example.invalid/x.png", "TEXT": "x", "top_caption": None, "status": "fetch_error"}],
     "no row"),
    ("TEXT", [{"TEXT": "x", "top_caption": "y", "status": "ok"}], "neither an 'image' nor a 'URL'"),
])
def test_unusable_dataset_fails_with_one_line(output, tmp_path, capsys, human_column, rows, named):
    dataset = _write_output(tmp_path / "output", rows) if rows else output
    argv = ["serve", "--dataset", str(dataset), "--db", str(tmp_path / "r.sqlite"), "--human_column", human_column]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: ") and named in error
    assert _db_items(tmp_path / "r.sqlite") == {}  # nothing half-made


def test_a_folder_that_is_not_an_output_and_a_corrupt_chunk_are_named(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--dataset", str(tmp_path / "empty"), "--db", str(tmp_path / "r.sqlite")]) == 2
    assert capsys.readouterr().err == f"error: {str(tmp_path / 'empty')!r} holds no data/train-*.parquet: not a finished output\n"
    (tmp_path / "corrupt" / "data").mkdir(parents=True)
    (tmp_path / "corrupt" / "data" / "train-00000-00000.parquet").write_bytes(b"PAR1 not really")
    assert main(["serve", "--dataset", str(tmp_path / "corrupt"), "--db", str(tmp_path / "r.sqlite")]) == 2
    assert capsys.readouterr().err.startswith(f"error: cannot read the dataset {str(tmp_path / 'corrupt')!r}: ")


def test_url_rows_are_fetched_and_unfetchable_ones_skipped(image_server, tmp_path, caplog):
    paths = ["/img/jpeg_rgb?he=1", "/404?he=2", "/img/png_rgb?he=3"]
    rows = [{"URL": image_server.url(path), "TEXT": f"human {i}", "top_caption": f"machine {i}", "status": "ok"}
            for i, path in enumerate(paths)]
    fetch = FetchConfig(allow_networks="127.0.0.0/8", fetch_retries=0)
    items = choose_items(EvalSettings(str(_write_output(tmp_path / "output", rows)), "TEXT", 0, 10), fetch)
    assert sorted((item.row_index, item.kind, item.caption) for item in items) == [
        (0, HUMAN, "human 0"), (0, MACHINE, "machine 0"), (2, HUMAN, "human 2"), (2, MACHINE, "machine 2")]
    assert all(image_server.count(path) == 1 for path in paths)
    assert "skipped 1 of 3 picked rows" in caplog.text and "404" in caplog.text
    assert len({item.item_id for item in items}) == 4


def test_human_captions_can_come_from_references_by_url(output, tmp_path):
    references = tmp_path / "coco.jsonl"
    references.write_text('{"url": "http://example.invalid/0.png", "captions": ["ref zero a", "ref zero b"]}\n'
                          '{"url": "http://example.invalid/6.png", "captions": ["ref six"]}\n'
                          '{"url": "http://example.invalid/2.png", "captions": ["a row that is not ok"]}\n')
    settings = EvalSettings(str(output), "TEXT", 0, 10, str(references))
    items = choose_items(settings, FetchConfig())
    assert sorted((item.row_index, item.kind) for item in items) == [(0, HUMAN), (0, MACHINE), (6, HUMAN), (6, MACHINE)]
    human = {item.row_index: item.caption for item in items if item.kind == HUMAN}
    assert human[0] in ("ref zero a", "ref zero b") and human[6] == "ref six"
    assert {item.caption for item in choose_items(settings, FetchConfig()) if item.row_index == 0
            and item.kind == HUMAN} == {human[0]}  # the seed picks the same reference every time
    assert settings.as_meta()["references"] == str(references.resolve())


@pytest.mark.timeout(120)
def test_an_output_pushed_to_the_hub_gives_the_same_items_as_the_folder(output, hub_server, tmp_path):
    push = subprocess.run([sys.executable, "-c", "import sys\nfrom builder.hub import push_output\n"
                           "push_output(sys.argv[1], 'user/rated')", str(output)],
                          cwd=REPO, env=hub_server.env(), capture_output=True, text=True, timeout=100)
    assert push.returncode == 0, push.stderr[-3000:]
    db = tmp_path / "hub.sqlite"
    with serving(hub_server.env(), tmp_path / "serve.log", "--dataset", "user/rated", "--db", str(db),
                 "--items", "4"):
        pass
    local = choose_items(EvalSettings(str(output), "TEXT", 0, 4), FetchConfig())
    assert sorted(map(tuple, _db_items(db).values())) == sorted((i.row_index, i.kind, i.caption, i.thumbnail)
                                                              for i in local)

    missing = subprocess.run([sys.executable, "-m", "tools.human_eval", "serve", "--dataset", "user/missing",
                              "--db", str(tmp_path / "missing.sqlite")],
                             cwd=REPO, env=hub_server.env(), capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines()[-1].startswith("error: cannot read the dataset 'user/missing': ")


def test_rows_are_spread_evenly_and_seeded():
    rows = list(range(10, 40))
    picked = pick_rows(rows, 3, seed=7)
    assert [row // 10 for row in picked] == [1, 2, 3]  # one from each third
    assert pick_rows(rows, 3, seed=7) == picked
    assert {tuple(pick_rows(rows, 3, seed)) for seed in range(5)} != {tuple(picked)}
    assert pick_rows(rows, 30, seed=7) == pick_rows(rows, 99, seed=7) == rows


# ---- the report ----

def _rated_db(path: Path, answers: list[tuple[str, str, int, str]]) -> Path:
    """A database holding one item per (rater, kind, rating, guess) and that answer to it."""
    store = RatingStore(path)
    items = [Item(f"item-{i}", i, None, kind, f"caption {i}", "data:image/jpeg;base64,")
             for i, (_, kind, _, _) in enumerate(answers)]
    store.create({"dataset": "by hand", "human_column": "TEXT", "seed": "0", "items": str(len(items))}, items)
    tokens = invite(store, sorted({rater for rater, *_ in answers}))
    for item, (rater, _, rating, guess) in zip(items, answers, strict=True):
        assert store.add_answer(store.rater(token_hash(tokens[rater])), item.item_id, rating, guess)
    store.close()
    return path


def _table(report: str) -> dict[str, tuple[str, str, str]]:
    cells = [line.strip("|").split("|") for line in report.splitlines() if line.startswith("| ")]
    return {name.strip(): tuple(cell.strip() for cell in rest) for name, *rest in cells[1:]}


def test_report_matches_hand_computed_numbers(tmp_path, capsys):
    db = _rated_db(tmp_path / "ratings.sqlite", [
        ("alice", HUMAN, 5, HUMAN), ("alice", HUMAN, 4, HUMAN), ("alice", MACHINE, 4, HUMAN),
        ("alice", HUMAN, 3, MACHINE), ("bob", HUMAN, 1, MACHINE), ("bob", MACHINE, 2, MACHINE),
        ("bob", MACHINE, 0, MACHINE)])
    assert main(["report", str(db), "--plot", str(tmp_path / "ratings.png")]) == 0
    report = capsys.readouterr().out
    assert _table(report) == {
        # human 5 4 3 1: mean 13/4, sample variance (1.75² + 0.75² + 0.25² + 2.25²) / 3 = 8.75 / 3
        "human captions": ("4", "3.25", "1.71"),
        "machine captions": ("3", "2.00", "2.00"),  # 4 2 0: variance (4 + 0 + 4) / 2
        "captions believed human": ("3", "4.33", "0.58"),  # 5 4 4: variance (4/9 + 1/9 + 1/9) / 2 = 1/3
        "captions believed machine": ("4", "1.50", "1.29"),  # 3 1 2 0: variance 5 / 3
        "human captions, ratings 2-5": ("3", "4.00", "1.00"),  # 5 4 3
        "machine captions, ratings 2-5": ("2", "3.00", "1.41"),  # 4 2: variance 2
        "captions believed human, ratings 2-5": ("3", "4.33", "0.58"),
        "captions believed machine, ratings 2-5": ("2", "2.50", "0.71"),  # 3 2: variance 1/2
    }
    assert "machine captions taken for human: 33.3% (1 of 3)" in report
    assert "human captions taken for human: 50.0% (2 of 4)" in report
    assert "answers per rater: alice 4, bob 3" in report and "sample standard deviation" in report
    with Image.open(tmp_path / "ratings.png") as plot:
        assert plot.format == "PNG" and plot.size == (600, 320)


def test_report_of_too_few_answers_says_so(tmp_path, capsys):
    db = _rated_db(tmp_path / "ratings.sqlite", [("alice", MACHINE, 1, HUMAN)])
    assert main(["report", str(db)]) == 0
    report = capsys.readouterr().out
    table = _table(report)
    assert table["machine captions"] == ("1", "1.00", "—")
    assert table["machine captions, ratings 2-5"] == table["human captions"] == ("0", "—", "—")
    assert "machine captions taken for human: 100.0% (1 of 1)" in report
    assert "human captions taken for human: — (0 of 0)" in report


def test_report_refuses_a_missing_or_empty_database(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.sqlite")]) == 2
    assert "error: no ratings database at" in capsys.readouterr().err
    assert not (tmp_path / "missing.sqlite").exists()
    RatingStore(tmp_path / "empty.sqlite").close()
    assert main(["report", str(tmp_path / "empty.sqlite")]) == 2
    assert "holds no answers from a rater's link yet\n" in capsys.readouterr().err


def test_a_human_eval_error_is_a_user_error_wherever_those_are_reported(capsys):
    """One error base: the builder's reporter takes it as bad input (exit 2, one line), not as a crash (1)."""
    assert failed(HumanEvalError("rater name 'a,b' holds a comma")) == 2
    assert capsys.readouterr().err == "error: rater name 'a,b' holds a comma\n"

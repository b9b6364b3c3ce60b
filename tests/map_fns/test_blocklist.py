"""Blocklists: every entry form matches what it should and nothing near it, reasons name the right list, bad files
fail with one line, Hub files come through the real huggingface_hub client, and a blocklist pickles cheaply."""

import hashlib
import json
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest

from map_fns import blocklist as blocklist_module
from map_fns.blocklist import Blocklist, ListInfo
from map_fns.flags import ConfigError
from tests.hub_server import StoredFile

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
JPEG = b"\xff\xd8\xff\xe0 pretend image bytes \xff\xd9"


def sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def md5(data: str | bytes) -> str:
    return hashlib.md5(data.encode() if isinstance(data, str) else data).hexdigest()


def write(path: Path, *lines: str, newline: str = "\n") -> str:
    path.write_bytes(newline.join(lines).encode() + newline.encode())
    return str(path)


def error_of(sources: list[str]) -> str:
    with pytest.raises(ConfigError) as caught:
        Blocklist.load(sources)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_each_form_matches_what_it_lists(tmp_path):
    listed = write(tmp_path / "mixed.txt",
                   "https://cdn.example.com/a.jpg?w=640&h=480",
                   sha256("http://img.example.org/b.png"),
                   md5("http://img.example.org/c.png").upper(),
                   sha256(JPEG).upper(),
                   md5(JPEG + b"other"))
    blocklist = Blocklist.load([listed])
    assert blocklist.url_reasons(["https://cdn.example.com/a.jpg?w=640&h=480", "http://img.example.org/b.png",
                                  "http://img.example.org/c.png", None, "http://img.example.org/d.png"]) == [
        "URL listed in mixed.txt", "URL's SHA-256 listed in mixed.txt", "URL's MD5 listed in mixed.txt", None, None]
    assert blocklist.content_reason(JPEG) == "image SHA-256 listed in mixed.txt"
    assert blocklist.content_reason(JPEG + b"other") == "image MD5 listed in mixed.txt"
    assert blocklist.content_reason(JPEG + b"x") is None


def test_a_digest_is_checked_as_a_url_hash_and_as_an_image_hash(tmp_path):
    """Published lists do not say which a digest is: the same line blocks the URL and bytes that hash alike."""
    url = "http://img.example.org/e.jpg"
    blocklist = Blocklist.load([write(tmp_path / "h.txt", sha256(url), md5(JPEG))])
    assert blocklist.url_reasons([url]) == ["URL's SHA-256 listed in h.txt"]
    assert blocklist.content_reason(url.encode()) == "image SHA-256 listed in h.txt"
    assert blocklist.content_reason(JPEG) == "image MD5 listed in h.txt"
    assert blocklist.url_reasons([JPEG.decode("latin-1")]) == [None]  # a string is hashed as UTF-8, not latin-1


def test_near_misses_do_not_match(tmp_path):
    url = "https://cdn.example.com/photos/a.jpg"
    blocklist = Blocklist.load([write(tmp_path / "l.txt", url, sha256(JPEG), md5(JPEG + b"1"))])
    near = ["https://cdn.example.com/photos/b.jpg", "https://cdn.example.com/photos/",
            "https://cdn.example.com/photos/a",
            url + "/", url + "?", "http://cdn.example.com/photos/a.jpg", "HTTPS://cdn.example.com/photos/a.jpg",
            " " + url, ""]
    assert blocklist.url_reasons(near) == [None] * len(near)
    assert blocklist.url_reasons([url]) == ["URL listed in l.txt"]
    for data in (JPEG[:-1], JPEG + b"\0", b"\0" + JPEG, JPEG + b"2", b""):
        assert blocklist.content_reason(data) is None
    one_digit_off = "0" + sha256(JPEG)[1:] if sha256(JPEG)[0] != "0" else "1" + sha256(JPEG)[1:]
    assert not Blocklist.load([write(tmp_path / "m.txt", one_digit_off)]).content_reason(JPEG)


def test_an_everyday_file_crlf_bom_unicode_urls_fragments_and_comments(tmp_path):
    url = "https://例え.jp/画像 1.jpg?q=ü&w=1#frag"
    path = tmp_path / "win.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join([
        url, "  # a comment, not an entry  ", "", "   ", f"\t{sha256(JPEG)}  ", "#" + md5(JPEG), ""]).encode())
    blocklist = Blocklist.load([str(path)])
    assert blocklist.lists == (ListInfo("win.txt", 2, sha256(path.read_bytes())),)
    assert blocklist.url_reasons([url, url.partition("#")[0]]) == ["URL listed in win.txt", None]
    assert blocklist.content_reason(JPEG) == "image SHA-256 listed in win.txt"


def test_two_lists_each_named_in_their_reasons(tmp_path):
    first = write(tmp_path / "first.txt", "http://a.example/1.jpg", "http://both.example/x.jpg", md5(JPEG))
    second = write(tmp_path / "second.txt", "http://both.example/x.jpg", "http://b.example/2.jpg",
                   sha256("http://b.example/3.jpg"), sha256(JPEG))
    blocklist = Blocklist.load([first, second])
    assert blocklist.url_reasons(["http://a.example/1.jpg", "http://b.example/2.jpg", "http://b.example/3.jpg",
                                  "http://both.example/x.jpg"]) == [
        "URL listed in first.txt", "URL listed in second.txt", "URL's SHA-256 listed in second.txt",
        "URL listed in first.txt"]  # in both: the first list given
    assert blocklist.content_reason(JPEG) == "image SHA-256 listed in second.txt"  # SHA-256 is checked first
    assert [info.entries for info in blocklist.lists] == [3, 4]


def test_duplicates_are_counted_once(tmp_path):
    path = write(tmp_path / "dups.txt", "http://a.example/1.jpg", "  http://a.example/1.jpg", "http://a.example/1.JPG",
                 sha256(JPEG), sha256(JPEG).upper(), md5(JPEG), md5(JPEG).upper(), "# http://a.example/2.jpg")
    assert Blocklist.load([path]).lists[0].entries == 4  # two URLs (case matters in a path), one SHA-256, one MD5


@pytest.mark.parametrize("line, problem", [
    ("www.example.com/a.jpg", "is not a URL"),  # no scheme
    ("url,reason", "is not a URL"),  # a CSV header: CSV is not a supported format
    (hashlib.sha1(JPEG).hexdigest(), "is not a URL"),  # 40 hex digits: SHA-1
    ("g" * 32, "is not a URL"),  # MD5-sized, not hex
    (sha256(JPEG)[:-1] + "z", "is not a URL"),
    ("0123456789abcdef 0123456789abcde", "is not a URL"),  # 32 characters with a space in them
])
def test_a_bad_line_names_the_file_and_the_line(tmp_path, line, problem):
    path = write(tmp_path / "bad.txt", "# header", md5(JPEG), line, "http://fine.example/x.jpg")
    assert error_of([path]) == f"--blocklist {path} line 3: {line!r} {problem} (containing ://), an MD5 (32 hex " \
                               f"digits) or a SHA-256 (64 hex digits)"


def test_a_url_that_is_not_utf8_names_its_line(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"http://ok.example/1.jpg\nhttp://bad.example/caf\xe9.jpg\n")
    assert error_of([str(path)]) == f"--blocklist {path} line 2: 'http://bad.example/caf\ufffd.jpg' is not UTF-8 text"


def test_line_numbers_count_across_read_chunks(tmp_path, monkeypatch):
    """Big files are parsed a chunk of lines at a time; the line a bad entry is on counts every chunk before it."""
    monkeypatch.setattr(blocklist_module, "_READ_BYTES", 100)
    urls = [f"http://a.example/{i}.jpg" for i in range(60)]
    good = write(tmp_path / "good.txt", *urls)
    assert Blocklist.load([good]).url_reasons(urls[::7]) == ["URL listed in good.txt"] * len(urls[::7])
    bad = write(tmp_path / "bad.txt", *urls[:40], "x" * 64, *urls[40:])
    assert error_of([bad]).startswith(f"--blocklist {bad} line 41: 'xxxx")
    not_utf8 = tmp_path / "later.txt"
    not_utf8.write_bytes("\n".join(urls[:50]).encode() + b"\nhttp://\xff\n")
    assert error_of([str(not_utf8)]).startswith(f"--blocklist {not_utf8} line 51: ")


def test_a_missing_file_is_one_line(tmp_path):
    good = write(tmp_path / "good.txt", "http://a.example/1.jpg")
    assert error_of([good, str(tmp_path / "nope.txt")]) == f"--blocklist {tmp_path / 'nope.txt'}: no such file"
    assert error_of([str(tmp_path)]) == f"--blocklist {tmp_path}: no such file"


def test_an_empty_blocklist_matches_nothing(tmp_path):
    empty = Blocklist.load([])
    assert not empty and empty.lists == ()
    assert empty.url_reasons(["http://a.example/1.jpg", None]) == [None, None]
    assert empty.content_reason(JPEG) is None
    only_comments = Blocklist.load([write(tmp_path / "c.txt", "# nothing yet", "")])
    assert not only_comments and only_comments.lists[0].entries == 0
    assert only_comments.url_reasons([]) == []


def test_pickles_as_its_sources_and_reloads_them(tmp_path):
    entries = [f"http://a.example/{i}.jpg" for i in range(20_000)]
    path = write(tmp_path / "big.txt", *entries, sha256(JPEG))
    blocklist = Blocklist.load([path])
    pickled = pickle.dumps(blocklist)
    assert len(pickled) < 1000  # the sources and checksums, not 20,000 keys
    copy = pickle.loads(pickled)
    assert copy.lists == blocklist.lists
    assert copy.url_reasons(entries[::1000] + ["http://a.example/x.jpg"]) == blocklist.url_reasons(
        entries[::1000] + ["http://a.example/x.jpg"])
    assert copy.content_reason(JPEG) == "image SHA-256 listed in big.txt"
    write(tmp_path / "big.txt", *entries)  # changed after it was loaded: a process must not run on another list
    with pytest.raises(ConfigError, match=r"^--blocklist .*big.txt changed since it was loaded \(sha256 "):
        pickle.loads(pickled)


def test_the_datasets_fingerprint_follows_the_lists_content(tmp_path):
    """`datasets` fingerprints a map function by pickling it: equal lists hash equal, an edited list differently."""
    from datasets.fingerprint import Hasher

    path = write(tmp_path / "l.txt", "http://a.example/1.jpg")
    first, again = Hasher.hash(Blocklist.load([path])), Hasher.hash(Blocklist.load([path]))
    write(tmp_path / "l.txt", "http://a.example/2.jpg")
    assert first == again != Hasher.hash(Blocklist.load([path]))


def test_a_large_list_agrees_with_a_python_set(tmp_path):
    """200k entries of every form; a sample of hits and misses of each kind checked against plain sets."""
    rng = random.Random(19)
    listed_urls = [f"https://img{rng.randrange(10**6)}.example.com/{rng.getrandbits(64):x}.jpg" for _ in range(80_000)]
    url_hashed = [f"http://h.example/{i}/{rng.getrandbits(32):x}.png" for i in range(40_000)]
    images = [rng.randbytes(40) for _ in range(40_000)]
    sha256s = {sha256(url) for url in url_hashed[:20_000]} | {sha256(image) for image in images[:20_000]}
    sha256s |= {rng.randbytes(32).hex() for _ in range(20_000)}
    md5s = {md5(url) for url in url_hashed[20_000:]} | {md5(image) for image in images[20_000:]}
    md5s |= {rng.randbytes(16).hex() for _ in range(20_000)}
    lines = listed_urls + [digest.upper() if i % 3 else digest for i, digest in enumerate(sha256s | md5s)]
    lines += listed_urls[:1000]  # duplicates
    rng.shuffle(lines)
    blocklist = Blocklist.load([write(tmp_path / "big.txt", *lines)])
    urls = set(listed_urls)

    def expected_url(url: str) -> str | None:
        if url in urls:
            return "URL listed in big.txt"
        if sha256(url) in sha256s:
            return "URL's SHA-256 listed in big.txt"
        return "URL's MD5 listed in big.txt" if md5(url) in md5s else None

    def expected_image(image: bytes) -> str | None:
        if sha256(image) in sha256s:
            return "image SHA-256 listed in big.txt"
        return "image MD5 listed in big.txt" if md5(image) in md5s else None

    queries = rng.sample(listed_urls, 1000) + rng.sample(url_hashed, 1000)
    queries += [url[:-1] + "x" for url in rng.sample(listed_urls, 500)] + [url + "/" for url in url_hashed[:500]]
    rng.shuffle(queries)
    assert blocklist.lists[0].entries == len(urls) + len(sha256s) + len(md5s)
    got = [reason for batch in range(0, len(queries), 1000) for reason in blocklist.url_reasons(queries[batch:][:1000])]
    assert got == [expected_url(url) for url in queries]
    assert {reason for reason in got} == {None, "URL listed in big.txt", "URL's SHA-256 listed in big.txt",
                                          "URL's MD5 listed in big.txt"}
    sample = rng.sample(images, 1000) + [rng.randbytes(40) for _ in range(500)]
    assert [blocklist.content_reason(image) for image in sample] == [expected_image(image) for image in sample]


HUB_LOAD = """
import json, sys
from map_fns.blocklist import Blocklist
from map_fns.flags import ConfigError
from tests.hub_server import StoredFile
results = []
for source in sys.argv[1:]:
    try:
        blocklist = Blocklist.load([source])
        results.append([blocklist.lists[0].name, blocklist.lists[0].entries,
                        blocklist.url_reasons(["http://a.example/1.jpg", "http://a.example/2.jpg"])])
    except ConfigError as err:
        results.append(str(err))
print(json.dumps(results))
"""


def test_hub_files_through_the_real_client(hub_server, tmp_path):
    folder = tmp_path / "repo"
    (folder / "lists").mkdir(parents=True)
    write(folder / "lists" / "urls.txt", "http://a.example/1.jpg")
    hub_server.add_repo("org/blocklists", folder, repo_type="datasets")
    write(folder / "lists" / "urls.txt", "http://a.example/2.jpg")
    model_repo = hub_server.add_repo("org/model-with-list", folder)
    commit = model_repo.branches["main"]
    with hub_server.lock:  # main moves on: the revision asked for must be the one read
        files = {**model_repo.commit("main").files, "lists/urls.txt": StoredFile.regular(b"http://a.example/1.jpg\n")}
        model_repo.add_commit("main", "Edit the list", files, ["lists/urls.txt"])
    sources = ["hf://datasets/org/blocklists/lists/urls.txt", f"hf://org/model-with-list@{commit}/lists/urls.txt",
               "hf://datasets/org/blocklists/lists/missing.txt", "hf://datasets/org/no-such-repo/urls.txt",
               "hf://datasets/org/blocklists"]
    done = subprocess.run([sys.executable, "-c", HUB_LOAD, *sources], cwd=REPO, env=hub_server.env(),
                          capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == [
        [sources[0], 1, ["URL listed in hf://datasets/org/blocklists/lists/urls.txt", None]],
        [sources[1], 1, [None, f"URL listed in {sources[1]}"]],
        f"--blocklist {sources[2]}: cannot download: org/blocklists has no file lists/missing.txt",
        f"--blocklist {sources[3]}: cannot download: the Hub has no dataset repo org/no-such-repo (a private one "
        "needs HF_TOKEN)",
        f"--blocklist {sources[4]}: expected hf://datasets/ORG/REPO[@REVISION]/PATH or hf://ORG/REPO[@REVISION]/PATH",
    ]
    offline = {**hub_server.env(), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", HUB_LOAD, sources[0], "hf://datasets/org/blocklists/other.txt"],
                          cwd=REPO, env=offline, capture_output=True, text=True, timeout=50)
    assert done.returncode == 0, done.stderr[-3000:]
    cached, not_cached = json.loads(done.stdout)
    assert cached[1] == 1  # from the cache the first run filled
    assert not_cached.startswith("--blocklist hf://datasets/org/blocklists/other.txt: cannot download: not in the "
                                 "local cache, and the Hub cannot be reached")

"""What the fetch stage keeps out: listed URLs are never requested, listed image bytes are never decoded, rows
failing a score filter are never requested; each such row keeps its place with a status and a reason."""

import hashlib

import pytest

import map_fns.fetch as fetch_module
from map_fns.fetch import FetchConfig, make_fetch_fn
from map_fns.status import BLOCKED_BY_LIST, FILTERED, OK

pytestmark = pytest.mark.timeout(30)

LOOPBACK = "127.0.0.0/8"


@pytest.fixture
def decoded(monkeypatch) -> list[bytes]:
    """Every body the fetch stage hands to the image decoder, in order: listed bytes must never be among them."""
    seen: list[bytes] = []
    real = fetch_module.decode_for_models

    def spy(data, *args, **kwargs):
        seen.append(bytes(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(fetch_module, "decode_for_models", spy)
    return seen


def listed(tmp_path, name: str, *entries: str) -> str:
    path = tmp_path / name
    path.write_text("# a test list\n" + "\n".join(entries) + "\n")
    return str(path)


def test_a_listed_url_is_never_requested(tmp_path, image_server):
    by_url, by_hash = image_server.url("/img/png_rgb?listed"), image_server.url("/img/bmp?listed-by-hash")
    fine = image_server.url("/img/webp?not-listed")
    blocklist = listed(tmp_path, "urls.txt", by_url, hashlib.md5(by_hash.encode()).hexdigest().upper())
    fetch = make_fetch_fn(FetchConfig(allow_networks=LOOPBACK, fetch_retries=0, blocklist=[blocklist]))
    out = fetch({"URL": [by_url, fine, by_hash, by_url]})
    assert out["status"] == [BLOCKED_BY_LIST, OK, BLOCKED_BY_LIST, BLOCKED_BY_LIST]
    assert out["error"] == ["URL listed in urls.txt", None, "URL's MD5 listed in urls.txt", "URL listed in urls.txt"]
    assert out["_image"][0] is None and out["image_width"][0] is None
    assert [image_server.count(path) for path in ("/img/png_rgb?listed", "/img/bmp?listed-by-hash",
                                                   "/img/webp?not-listed")] == [0, 0, 1]


def test_a_redirect_to_a_listed_url_is_not_followed(tmp_path, image_server):
    target = image_server.url("/img/jpeg_rgb?redirected-to-listed")
    blocklist = listed(tmp_path, "urls.txt", target)
    fetch = make_fetch_fn(FetchConfig(allow_networks=LOOPBACK, fetch_retries=0, blocklist=[blocklist]))
    out = fetch({"URL": [image_server.url(f"/redirect-to?url={target}")]})
    assert (out["status"], out["error"]) == ([BLOCKED_BY_LIST], ["URL listed in urls.txt"])
    assert image_server.count("/img/jpeg_rgb?redirected-to-listed") == 0


def test_listed_image_bytes_are_fetched_but_never_decoded_kept_or_fetched_again(tmp_path, image_server,
                                                                                 sample_images, decoded):
    listed_bytes = sample_images["png_rgba"].data
    blocklist = listed(tmp_path, "images.txt", hashlib.sha256(listed_bytes).hexdigest())
    fetch = make_fetch_fn(FetchConfig(allow_networks=LOOPBACK, fetch_retries=0, blocklist=[blocklist]))
    url, other = image_server.url("/img/png_rgba?content-listed"), image_server.url("/img/gif_animated?content-fine")
    for _ in range(2):  # the second batch: the outcome is remembered without its body, and not requested again
        out = fetch({"URL": [url, other]})
        assert out["status"] == [BLOCKED_BY_LIST, OK]
        assert out["error"][0] == "image SHA-256 listed in images.txt"
        assert out["_image"][0] is None and out["image_width"][0] is None
    assert image_server.count("/img/png_rgba?content-listed") == 1  # fetched: only its bytes tell
    assert listed_bytes not in decoded and sample_images["gif_animated"].data in decoded


def test_listed_embedded_bytes_and_local_files_are_never_decoded(tmp_path, image_server, sample_images, decoded,
                                                                 closed_port_url):
    embedded, on_disk, in_cell = (sample_images[name].data for name in ("jpeg_rgb", "webp", "png_l"))
    (tmp_path / "listed.webp").write_bytes(on_disk)
    blocklist = listed(tmp_path, "images.txt", hashlib.md5(embedded).hexdigest(), hashlib.sha256(on_disk).hexdigest(),
                       hashlib.sha256(in_cell).hexdigest())
    fetch = make_fetch_fn(FetchConfig(blocklist=[blocklist]), read_local_files=True)
    out = fetch({"URL": [closed_port_url] * 4,
                 "image": [embedded, {"bytes": None, "path": str(tmp_path / "listed.webp")},
                           {"bytes": in_cell, "path": "photo.png"},  # a cell as a datasets Image column holds it
                           sample_images["bmp"].data]})
    assert out["status"] == [BLOCKED_BY_LIST, BLOCKED_BY_LIST, BLOCKED_BY_LIST, OK]
    assert out["error"][:3] == ["image MD5 listed in images.txt", "image SHA-256 listed in images.txt",
                                "image SHA-256 listed in images.txt"]
    assert decoded == [sample_images["bmp"].data]


def test_a_listed_cell_path_url_is_never_requested(tmp_path, image_server):
    path = "/img/bmp?cell-path-listed"
    blocklist = listed(tmp_path, "urls.txt", image_server.url(path))
    fetch = make_fetch_fn(FetchConfig(allow_networks=LOOPBACK, blocklist=[blocklist]))
    out = fetch({"URL": [image_server.url("/img/png_rgb?cell-path-row")],
                 "image": [{"bytes": None, "path": image_server.url(path)}]})
    assert out["status"] == [BLOCKED_BY_LIST]
    assert image_server.count(path) == 0 and image_server.count("/img/png_rgb?cell-path-row") == 0


def test_rows_failing_a_source_score_filter_are_never_requested(image_server):
    fetch = make_fetch_fn(FetchConfig(allow_networks=LOOPBACK, fetch_retries=0, max_punsafe=0.5,
                                      filter=["similarity>=0.3"]))
    paths = [f"/img/bmp?filtered-{i}" for i in range(5)]
    out = fetch({"URL": [image_server.url(path) for path in paths], "punsafe": [0.1, 0.9, None, 0.2, 0.5],
                 "similarity": [0.35, 0.5, 0.4, 0.1, 0.3]})
    assert out["status"] == [OK, FILTERED, FILTERED, FILTERED, OK]
    assert out["error"][1:4] == [
        "punsafe 0.9 fails filter punsafe<=0.5", "punsafe is missing (filter punsafe<=0.5)",
        "similarity 0.1 fails filter similarity>=0.3"]
    assert [image_server.count(path) for path in paths] == [1, 0, 0, 0, 1]


def test_a_listed_url_wins_over_a_failed_filter(tmp_path, image_server):
    url = image_server.url("/img/bmp?listed-and-filtered")
    fetch = make_fetch_fn(FetchConfig(allow_networks=LOOPBACK, max_pwatermark=0.5,
                                      blocklist=[listed(tmp_path, "urls.txt", url)]))
    out = fetch({"URL": [url], "pwatermark": [0.9]})
    assert (out["status"], out["error"]) == ([BLOCKED_BY_LIST], ["URL listed in urls.txt"])

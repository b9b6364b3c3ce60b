import io
import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from map_fns.fetch import FetchConfig, image_source, make_fetch_fn
from map_fns.status import BLOCKED, DECODE_ERROR, FETCH_ERROR, INVALID_URL, OK, OPTED_OUT

pytestmark = pytest.mark.timeout(30)

COLUMNS = ["status", "error", "image_width", "image_height", "_image"]
LOOPBACK = "127.0.0.0/8"  # the test server's network: refused unless allowed


@pytest.fixture(scope="module")
def fetch():
    # The timeout is short for /stall to be quick, long enough for good images on a loaded test machine.
    return make_fetch_fn(FetchConfig(fetch_timeout=1.5, fetch_concurrency=8, max_image_bytes=100_000,
                                     fetch_retries=0, allow_networks=LOOPBACK))


def one(fetch, url, image=None):
    """Run a one-row batch; return its row as a dict."""
    batch = {"URL": [url]} if image is None else {"URL": [url], "image": [image]}
    out = fetch(batch)
    assert sorted(out) == sorted(COLUMNS)  # only the new columns
    return {k: v[0] for k, v in out.items()}


@pytest.mark.parametrize(
    "name",
    ["jpeg_rgb", "jpeg_cmyk", "jpeg_l", "png_rgba", "png_l", "png_p", "png_p_transparent", "png_i16"]
    + ["webp", "gif_animated", "bmp"],
)
def test_good_images(fetch, image_server, sample_images, name):
    row = one(fetch, image_server.url(f"/img/{name}"))
    assert (row["status"], row["error"]) == (OK, None)
    assert (row["image_width"], row["image_height"]) == sample_images[name].size
    assert isinstance(row["_image"], Image.Image) and row["_image"].mode == "RGB"
    assert row["_image"].size == sample_images[name].size


def test_exif_orientation_swaps_width_and_height(fetch, image_server):
    row = one(fetch, image_server.url("/img/jpeg_exif6"))
    assert (row["status"], row["image_width"], row["image_height"]) == (OK, 40, 60)


def test_redirect_is_followed(fetch, image_server):
    row = one(fetch, image_server.url("/redirect"))
    assert (row["status"], row["image_width"], row["image_height"]) == (OK, 64, 48)


def test_non_ascii_url_is_percent_encoded(fetch, image_server):
    row = one(fetch, image_server.url("/ü/ünïcode.png"))
    assert (row["status"], row["image_width"], row["image_height"]) == (OK, 50, 25)


def test_user_agent_is_sent(image_server):
    fetch = make_fetch_fn(FetchConfig(user_agent="test-agent/9", allow_networks=LOOPBACK))
    assert one(fetch, image_server.url("/img/png_rgb?ua-test"))["status"] == OK
    assert ("/img/png_rgb?ua-test", "test-agent/9") in image_server.requests


@pytest.mark.parametrize(
    "path, status, error",
    [
        ("/404", FETCH_ERROR, "HTTP 404"),
        ("/500", FETCH_ERROR, "HTTP 500"),
        ("/big", FETCH_ERROR, "body larger than 100000 bytes"),  # refused from its Content-Length
        ("/big_chunked", FETCH_ERROR, "body larger than 100000 bytes"),  # no length: cut off while reading
        ("/stall", FETCH_ERROR, "timed out after 1.5s"),
        ("/html", DECODE_ERROR, "cannot identify image file"),
        ("/random", DECODE_ERROR, "cannot identify image file"),
        ("/empty", DECODE_ERROR, "empty body"),
    ],
)
def test_bad_responses(fetch, image_server, path, status, error):
    row = one(fetch, image_server.url(path))
    assert (row["status"], row["error"]) == (status, error)
    assert row["image_width"] is row["image_height"] is row["_image"] is None


def test_truncated_image(fetch, image_server):
    row = one(fetch, image_server.url("/truncated"))
    assert row["status"] == DECODE_ERROR and "truncated" in row["error"]


def test_decompression_bomb(image_server):
    row = one(make_fetch_fn(FetchConfig(allow_networks=LOOPBACK)), image_server.url("/bomb"))  # default pixel cap
    assert row["status"] == DECODE_ERROR and row["error"].startswith("decompression bomb")
    assert row["_image"] is None


def test_an_image_too_large_to_decode_in_memory(fetch, closed_port_url, png_claiming):
    """9400x9400 RGBA is under the pixel cap, but would take over 256 MiB (the default) to decode."""
    row = one(fetch, closed_port_url, png_claiming(9400, 9400, "RGBA"))
    assert row["status"] == DECODE_ERROR and row["_image"] is None
    assert row["error"].startswith("too large to decode: a 9400x9400 PNG needs ")
    assert row["error"].endswith(f" bytes, over the limit of {256 * 2**20}")
    lenient = make_fetch_fn(FetchConfig(max_image_decoded_bytes=2**30))
    row = one(lenient, closed_port_url, png_claiming(9400, 9400, "RGBA"))
    assert row["status"] == DECODE_ERROR and not row["error"].startswith("too large")  # it got to the (empty) pixels


def test_connection_refused(fetch, closed_port_url):
    row = one(fetch, closed_port_url)
    assert row["status"] == FETCH_ERROR and "refused" in row["error"].lower()


@pytest.mark.parametrize(
    "url, error",
    [
        (None, "empty URL"),
        ("", "empty URL"),
        ("   ", "empty URL"),
        ("ftp://example.com/a.jpg", "unsupported scheme 'ftp'"),
        ("file:///etc/passwd", "unsupported scheme 'file'"),
        ("http://", "no host in URL"),
        ("https:///a.jpg", "no host in URL"),
        ("not a url", "whitespace or control character in URL"),
        ("example.com/a.jpg", "no scheme in URL"),
        ("http://example.com/a b.jpg", "whitespace or control character in URL"),
        ("http://example.com/a\nb.jpg", "whitespace or control character in URL"),
        ("http://example.com:notaport/a.jpg", None),
        ("http://example.com:99999/a.jpg", None),
        ("http://[::1/a.jpg", None),
        (42, "URL must be a string, got int"),
    ],
)
def test_invalid_urls(fetch, url, error):
    row = one(fetch, url)
    assert row["status"] == INVALID_URL
    assert row["error"] == error if error else row["error"]
    assert row["_image"] is None


def test_embedded_bytes_are_decoded_without_fetching(fetch, image_server, sample_images, closed_port_url):
    png = sample_images["png_rgb"].data
    before = len(image_server.requests)
    out = fetch(
        {
            "URL": [closed_port_url, closed_port_url, None, image_server.url("/404")],
            "image": [png, {"bytes": png, "path": "x.png"}, {"bytes": png, "path": None}, png],
        }
    )
    assert out["status"] == [OK] * 4  # a fetch of any of these URLs would have failed
    assert out["image_width"] == [50] * 4 and out["image_height"] == [25] * 4
    assert len(image_server.requests) == before


def test_undecodable_embedded_bytes_are_a_decode_error(fetch, closed_port_url):
    row = one(fetch, closed_port_url, b"definitely not an image")
    assert (row["status"], row["error"]) == (DECODE_ERROR, "cannot identify image file")


def test_rows_without_an_image_cell_are_fetched_from_their_url(fetch, image_server, closed_port_url):
    out = fetch(
        {
            "URL": [image_server.url("/img/bmp"), image_server.url("/img/webp"), closed_port_url, None, None],
            "image": [None, {"bytes": None, "path": None}, {"bytes": b"", "path": ""}, None, b""],
        }
    )
    assert out["status"] == [OK, OK, FETCH_ERROR, INVALID_URL, INVALID_URL]
    assert out["image_width"] == [17, 35, None, None, None]


# --- image cells with a path -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, image, expected",
    [
        ("http://a/x.jpg", {"bytes": b"PNG...", "path": "http://b/y.jpg"}, (b"PNG...", None)),  # bytes win
        ("http://a/x.jpg", b"raw", (b"raw", None)),  # a binary column
        ("http://a/x.jpg", bytearray(b"raw"), (b"raw", None)),
        ("http://a/x.jpg", {"bytes": None, "path": "http://b/y.jpg"}, (None, "http://b/y.jpg")),  # the path wins
        ("http://a/x.jpg", {"bytes": b"", "path": "/data/y.png"}, (None, "/data/y.png")),
        ("http://a/x.jpg", "/data/y.png", (None, "http://a/x.jpg")),  # a string column: not an image column
        ("http://a/x.jpg", {"bytes": None, "path": None}, (None, "http://a/x.jpg")),
        ("http://a/x.jpg", {"bytes": b"", "path": ""}, (None, "http://a/x.jpg")),
        ("http://a/x.jpg", None, (None, "http://a/x.jpg")),
        (None, None, (None, None)),
        ("http://a/x.jpg", 42, (None, "http://a/x.jpg")),  # not a cell: holds no image
        ("http://a/x.jpg", {"bytes": 42, "path": None}, (None, "http://a/x.jpg")),
    ],
)
def test_image_source(url, image, expected):
    assert image_source(url, image) == expected


def test_a_cell_path_url_is_downloaded_instead_of_the_url_column(fetch, image_server, closed_port_url):
    path = "/img/webp?cell-path"
    out = fetch({"URL": [closed_port_url], "image": [{"bytes": None, "path": image_server.url(path)}]})
    assert (out["status"], out["image_width"]) == ([OK], [35])
    assert image_server.count(path) == 1


def test_a_cell_path_url_goes_through_the_address_policy(image_server):
    """Only 127.0.0.1 is allowed; the server also listens on 127.0.0.2 and [::1]."""
    assert "127.0.0.2" in image_server.aliases  # [::1] too where the machine has IPv6
    strict = make_fetch_fn(FetchConfig(allow_networks="127.0.0.1/32", fetch_retries=0))
    lenient = make_fetch_fn(FetchConfig(allow_networks="127.0.0.0/8,::1/128", fetch_retries=0))
    for host in image_server.aliases:
        path = f"/img/bmp?cell-path-blocked={host}"
        cell = {"bytes": None, "path": image_server.url_at(host, path)}
        row = one(strict, image_server.url("/img/png_rgb"), cell)
        assert (row["status"], row["error"]) == (BLOCKED, f"{host.strip('[]')} is not a public address")
        assert image_server.count(path) == 0
        assert one(lenient, None, cell)["status"] == OK  # the server is there: only the policy kept it out
        assert image_server.count(path) == 1


def test_a_stalled_cell_path_url_ends_at_the_deadline(image_server):
    fetch = make_fetch_fn(FetchConfig(fetch_timeout=8, fetch_deadline=1.0, allow_networks=LOOPBACK))
    start = time.monotonic()
    row = one(fetch, None, {"bytes": None, "path": image_server.url("/stall?cell-path")})
    assert (row["status"], row["error"]) == (FETCH_ERROR, "deadline of 1.0s exceeded")
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("path", ["hf://datasets/org/name/a.png", "s3://bucket/a.png", "file:///etc/passwd",
                                  "gs://bucket/a.png", "data:image/png;base64,iVBORw0KGgo="])
@pytest.mark.parametrize("read_local_files", [False, True])
def test_other_schemes_in_a_cell_path_are_invalid(image_server, path, read_local_files):
    fetch = make_fetch_fn(FetchConfig(allow_networks=LOOPBACK), read_local_files=read_local_files)
    before = len(image_server.requests)
    row = one(fetch, image_server.url("/img/bmp"), {"bytes": None, "path": path})
    scheme = path.split(":")[0]
    assert (row["status"], row["error"]) == (INVALID_URL, f"image path {path!r} has unsupported scheme {scheme!r}")
    assert len(image_server.requests) == before  # not the URL column either


@pytest.fixture
def local_images(tmp_path, sample_images) -> Path:
    """A local source as `datasets` writes one: images loaded from files, saved to parquet (bytes null, path
    absolute), read back undecoded as the builder reads it."""
    import datasets

    for name in ("png_rgba", "jpeg_exif6"):
        (tmp_path / f"{name}.img").write_bytes(sample_images[name].data)
    paths = [str(tmp_path / "png_rgba.img"), str(tmp_path / "jpeg_exif6.img")]
    datasets.Dataset.from_dict({"URL": [None, None], "image": paths}).cast_column(
        "image", datasets.Image()).to_parquet(tmp_path / "source.parquet")
    return tmp_path / "source.parquet"


def test_local_files_are_read_only_when_asked(local_images, sample_images):
    import datasets

    rows = datasets.Dataset.from_parquet(str(local_images)).cast_column("image", datasets.Image(decode=False))[:]
    assert [cell["bytes"] for cell in rows["image"]] == [None, None]  # what the fetch stage must cope with
    out = make_fetch_fn(FetchConfig(), read_local_files=True)(rows)
    assert out["status"] == [OK, OK]
    assert list(zip(out["image_width"], out["image_height"])) == [sample_images["png_rgba"].size, (40, 60)]
    out = make_fetch_fn(FetchConfig())(rows)  # a Hub source: its paths are someone else's, not this machine's
    assert out["status"] == [INVALID_URL, INVALID_URL]
    assert out["error"][0] == (f"image path {rows['image'][0]['path']!r} is a local file; local files are read "
                               f"only for a local source")


def test_only_regular_local_files_of_at_most_max_image_bytes_are_read(tmp_path, sample_images):
    os.mkfifo(tmp_path / "fifo")  # opening it to read would wait for a writer, forever
    (tmp_path / "big.png").write_bytes(sample_images["png_rgb"].data + bytes(100_000))
    (tmp_path / "small.png").write_bytes(sample_images["png_rgb"].data)
    long_name = "x" * 200 + "\nsecond line.png"
    fetch = make_fetch_fn(FetchConfig(max_image_bytes=100_000), read_local_files=True)
    cells = ["/dev/zero", str(tmp_path / "fifo"), str(tmp_path), str(tmp_path / "big.png"),
             str(tmp_path / "missing.png"), str(tmp_path / long_name), str(tmp_path / "small.png")]
    out = fetch({"URL": [None] * len(cells), "image": [{"bytes": None, "path": path} for path in cells]})
    assert out["status"] == [FETCH_ERROR] * 6 + [OK]
    assert out["error"][:5] == [
        "local file '/dev/zero' is not a regular file",
        f"local file {str(tmp_path / 'fifo')!r} is not a regular file",
        f"local file {str(tmp_path)!r} is not a regular file",
        f"local file {str(tmp_path / 'big.png')!r} is larger than 100000 bytes",
        f"cannot read local file {str(tmp_path / 'missing.png')!r}: No such file or directory",
    ]
    long_error = out["error"][5]
    assert "\n" not in long_error and len(long_error) < 200  # one line, the middle of the path cut out
    assert long_error.startswith("cannot read local file '/")
    assert long_error.endswith("line.png': No such file or directory")


def test_a_cell_that_is_not_an_image_cell_is_a_decode_error(fetch, image_server):
    cells = ["/a/path.png", 42, {"bytes": [1, 2], "path": None}]
    out = fetch({"URL": [image_server.url("/img/bmp")] * 3, "image": cells})
    assert out["status"] == [DECODE_ERROR] * 3
    assert out["error"] == ["image cell is str, not bytes or {bytes, path}",
                            "image cell is int, not bytes or {bytes, path}",
                            "image cell is {bytes: list, path: NoneType}, not bytes or {bytes, path}"]


# --- one request per URL -----------------------------------------------------------------------------


def test_repeated_urls_are_requested_once_across_batches(fetch, image_server, sample_images):
    urls = {"ok": image_server.url("/img/gif_animated?repeated"), "missing": image_server.url("/404?repeated"),
            "undecodable": image_server.url("/html?repeated")}
    for _ in range(4):  # batches: the window outlives a call
        out = fetch({"URL": [url for url in urls.values() for _ in range(100)]})
        assert out["status"] == [OK] * 100 + [FETCH_ERROR] * 100 + [DECODE_ERROR] * 100
        assert out["error"][100:] == ["HTTP 404"] * 100 + ["cannot identify image file"] * 100
        assert out["image_width"][:100] == [16] * 100
        assert len({image.tobytes() for image in out["_image"][:100]}) == 1
    assert [image_server.count(url.removeprefix(image_server.base)) for url in urls.values()] == [1, 1, 1]


def test_the_fetch_fn_shares_requests_across_threads(image_server):
    """The builder calls it from a background prefetch thread; another caller may run at the same time."""
    fetch = make_fetch_fn(FetchConfig(allow_networks=LOOPBACK, recent_downloads_bytes=0))
    path = "/sleep?s=0.5&threads"
    outs: list = []
    threads = [threading.Thread(target=lambda: outs.append(fetch({"URL": [image_server.url(path)] * 20})))
               for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [out["status"] for out in outs] == [[OK] * 20] * 3
    assert image_server.count(path) == 1


def test_the_fetch_fn_pickles_as_its_settings(image_server):
    """`datasets` pickles map functions to fingerprint them (and to hand them to workers)."""
    import dill
    from datasets.fingerprint import Hasher

    cfg = FetchConfig(allow_networks=LOOPBACK)
    assert Hasher.hash(make_fetch_fn(cfg)) == Hasher.hash(make_fetch_fn(cfg))
    assert Hasher.hash(make_fetch_fn(cfg)) != Hasher.hash(make_fetch_fn(cfg, read_local_files=True))
    assert Hasher.hash(make_fetch_fn(cfg)) != Hasher.hash(make_fetch_fn(FetchConfig(max_image_decoded_bytes=10)))
    copy = dill.loads(dill.dumps(make_fetch_fn(cfg)))
    assert copy({"URL": [image_server.url("/img/bmp?pickled")]})["status"] == [OK]


def test_batch_keeps_row_order(fetch, image_server, sample_images):
    names = ["gif_animated", "png_p", "jpeg_rgb", "webp", "bmp", "png_rgba", "jpeg_l"]
    bad = [(image_server.url("/404"), FETCH_ERROR), ("ftp://x", INVALID_URL), (image_server.url("/stall"), FETCH_ERROR)]
    urls, expected = [], []
    for i, name in enumerate(names):  # good, bad, good, bad, ...
        bad_url, bad_status = bad[i % 3]
        urls += [image_server.url(f"/img/{name}"), bad_url]
        expected += [(OK, sample_images[name].size), (bad_status, (None, None))]
    out = fetch({"URL": urls})
    assert all(len(column) == len(urls) for column in out.values())
    got = list(zip(out["status"], zip(out["image_width"], out["image_height"])))
    assert got == expected
    assert [im.size if im else None for im in out["_image"]] == [size if s == OK else None for s, size in expected]


def test_empty_batch(fetch):
    assert fetch({"URL": []}) == {column: [] for column in COLUMNS}


def test_datasets_image_column_without_decoding(fetch, sample_images, closed_port_url):
    import datasets

    ds = datasets.Dataset.from_dict(
        {"URL": [closed_port_url, closed_port_url], "image": [{"bytes": sample_images["bmp"].data, "path": None}, None]}
    ).cast_column("image", datasets.Image(decode=False))
    out = fetch(ds[:])
    assert out["status"] == [OK, FETCH_ERROR]
    assert out["image_width"] == [17, None]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fetch_timeout": 0}, "--fetch_timeout must be > 0, got 0"),
        ({"fetch_timeout": -1.5}, "--fetch_timeout must be > 0, got -1.5"),
        ({"fetch_concurrency": 0}, "--fetch_concurrency must be >= 1, got 0"),
        ({"fetch_deadline": 0}, "--fetch_deadline must be > 0, got 0"),
        ({"fetch_retries": -1}, "--fetch_retries must be >= 0, got -1"),
        ({"allow_networks": "10.0.0.0/8,nonsense"}, "--allow_networks"),
        ({"max_image_bytes": 0}, "--max_image_bytes must be >= 1, got 0"),
        ({"max_image_pixels": -3}, "--max_image_pixels must be >= 1, got -3"),
        ({"max_image_decoded_bytes": 0}, "--max_image_decoded_bytes must be >= 1, got 0"),
        ({"recent_downloads_bytes": -1}, "--recent_downloads_bytes must be >= 0, got -1"),
        ({"user_agent": ""}, "--user_agent must be a non-empty single line, got ''"),
        ({"user_agent": "a\r\nX-Evil: 1"}, "--user_agent must be a non-empty single line"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError) as info:
        FetchConfig(**kwargs)
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


def test_config_as_cli_flags():
    from transformers import HfArgumentParser

    parser = HfArgumentParser(FetchConfig)
    (cfg,) = parser.parse_args_into_dataclasses(["--fetch_concurrency", "4", "--fetch_timeout", "2.5"])
    assert (cfg.fetch_concurrency, cfg.fetch_timeout, cfg.max_image_pixels) == (4, 2.5, 89_478_485)
    help_text = parser.format_help()
    for flag in ("--fetch_timeout", "--fetch_concurrency", "--max_image_bytes", "--max_image_pixels", "--user_agent",
                 "--allow_networks", "--respect_optouts", "--fetch_deadline", "--resize_min_side",
                 "--max_image_decoded_bytes", "--recent_downloads_bytes"):
        assert flag in help_text
    with pytest.raises(ValueError, match="--fetch_concurrency must be >= 1, got 0"):
        parser.parse_args_into_dataclasses(["--fetch_concurrency", "0"])


def test_loopback_is_blocked_unless_allowed(image_server):
    row = one(make_fetch_fn(FetchConfig(fetch_retries=0)), image_server.url("/img/jpeg_rgb"))
    assert row["status"] == BLOCKED and "127.0.0.1" in row["error"] and row["_image"] is None


@pytest.mark.parametrize("host", ["0x7f000001", "0x7f.1", "0177.0.0.1", "127.1", "2130706433", "127.0x0.1"])
def test_ipv4_hosts_in_other_forms_are_invalid_though_loopback_is_allowed(fetch, image_server, host):
    port = image_server.base.rsplit(":", 1)[1]
    path = f"/img/png_rgb?form={host}"
    row = one(fetch, f"http://{host}:{port}{path}")
    assert (row["status"], row["error"]) == (INVALID_URL, f"{host!r} is not a canonical IPv4 address")
    assert image_server.count(path) == 0


def test_opted_out_images_are_never_decoded(fetch, image_server):
    row = one(fetch, image_server.url("/robots?tag=noai"))
    assert row["status"] == OPTED_OUT and "noai" in row["error"]
    assert row["_image"] is None and row["image_width"] is None


def test_large_images_are_decoded_once_at_the_models_size_and_report_their_own_size(fetch, closed_port_url):
    big = Image.new("RGB", (3000, 2000), (10, 120, 200))
    data = io.BytesIO()
    big.save(data, "JPEG", quality=90)
    row = one(fetch, closed_port_url, data.getvalue())
    assert (row["status"], row["image_width"], row["image_height"]) == (OK, 3000, 2000)
    shorter = FetchConfig().resize_min_side
    assert shorter < 2000 and row["_image"].size == (3000 * shorter // 2000, shorter)  # torchvision's rounding

import io

import pytest
from PIL import Image

from map_fns.fetch import FetchConfig, make_fetch_fn
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


def test_rows_without_embedded_bytes_are_fetched(fetch, image_server, closed_port_url):
    out = fetch(
        {
            "URL": [image_server.url("/img/bmp"), image_server.url("/img/webp"), closed_port_url, None],
            "image": [None, {"bytes": None, "path": "only/a/path.jpg"}, None, None],
        }
    )
    assert out["status"] == [OK, OK, FETCH_ERROR, INVALID_URL]
    assert out["image_width"] == [17, 35, None, None]


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
                 "--max_image_decoded_bytes"):
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
    big = Image.new("RGB", (1800, 1200), (10, 120, 200))
    data = io.BytesIO()
    big.save(data, "JPEG", quality=90)
    row = one(fetch, closed_port_url, data.getvalue())
    assert (row["status"], row["image_width"], row["image_height"]) == (OK, 1800, 1200)
    shorter = FetchConfig().resize_min_side
    assert row["_image"].size == (round(1800 * shorter / 1200), shorter)

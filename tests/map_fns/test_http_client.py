"""The downloader against the loopback image server (tests/image_server.py): no other network."""

import asyncio
import pickle
import threading
import time
import uuid
from urllib.parse import quote

import pytest

from map_fns.http_client import BlockedAddressError, Download, Downloader, PolicyResolver, check_url
from map_fns.net_policy import AddressPolicy, parse_networks
from map_fns.status import BLOCKED, FETCH_ERROR, INVALID_URL, OK, OPTED_OUT

pytestmark = pytest.mark.timeout(30)

LOOPBACK = AddressPolicy(parse_networks("127.0.0.0/8"))
SETTINGS = dict(
    timeout=0.5, deadline=3.0, max_bytes=100_000, max_redirects=3, retries=2, backoff=0.05,
    user_agent="laion-coco-builder/0.1", concurrency=8, policy=LOOPBACK, respect_optouts=True, recent_bytes=2**20,
)  # fmt: skip


def make(**overrides) -> Downloader:
    return Downloader(**{**SETTINGS, **overrides})


@pytest.fixture(scope="module")
def dl():
    with make() as downloader:
        yield downloader


@pytest.fixture
def key() -> str:
    """A fresh query value, so request counts are this test's own."""
    return uuid.uuid4().hex[:12]


def one(downloader: Downloader, url) -> Download:
    (result,) = downloader.fetch_all([url])
    assert isinstance(result, Download)
    assert (result.body is not None) == (result.status == OK)
    assert (result.error is None) == (result.status == OK)
    return result


def test_ok_body_and_user_agent(dl, image_server, sample_images, key):
    path = f"/img/jpeg_rgb?ua={key}"
    assert one(dl, image_server.url(path)) == Download(OK, None, sample_images["jpeg_rgb"].data)
    assert (path, "laion-coco-builder/0.1") in image_server.requests


def test_empty_body_is_ok_here(dl, image_server):
    assert one(dl, image_server.url("/empty")) == Download(OK, None, b"")


def test_results_keep_input_order(dl, image_server, sample_images):
    names = ["png_rgb", "webp", "bmp", "jpeg_l"]
    urls = [image_server.url(f"/img/{n}") for n in names]
    bad = [image_server.url("/404"), None, "ftp://x/a.jpg", "http://10.0.0.1/a.jpg"]
    results = dl.fetch_all([u for pair in zip(urls, bad) for u in pair])
    assert [r.status for r in results] == [OK, FETCH_ERROR, OK, INVALID_URL, OK, INVALID_URL, OK, BLOCKED]
    assert [r.body for r in results[::2]] == [sample_images[n].data for n in names]
    assert dl.fetch_all([]) == []


def test_calls_from_several_threads(dl, image_server, sample_images):
    results = {}

    def work(name):
        results[name] = dl.fetch_all([image_server.url(f"/img/{name}")] * 3)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("png_rgb", "bmp", "webp")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert {n: [r.body for r in rs] for n, rs in results.items()} == {
        n: [sample_images[n].data] * 3 for n in ("png_rgb", "bmp", "webp")
    }


def test_connections_are_reused_across_calls(image_server, key):
    paths = [f"/img/png_rgb?reuse={key}-{i}" for i in range(3)]
    with make() as downloader:  # its own pool: one connection, kept alive between calls
        for path in paths:
            assert one(downloader, image_server.url(path)).status == OK
    ports = {port for p, port in image_server.client_ports if p in paths}
    assert len(ports) == 1


def test_downloads_run_concurrently_up_to_the_limit(image_server, key):
    with make(concurrency=4) as downloader:
        start = time.monotonic()
        results = downloader.fetch_all([image_server.url(f"/sleep?s=0.4&k={key}-{i}") for i in range(8)])
        elapsed = time.monotonic() - start
    assert [r.status for r in results] == [OK] * 8
    assert 0.8 <= elapsed < 1.6  # two waves of four: concurrent, and no more than four at once


# --- HTTP errors and retries -------------------------------------------------------------------------


@pytest.mark.parametrize("code", [403, 404])
def test_client_errors_are_not_retried(dl, image_server, key, code):
    path = f"/{code}?k={key}"
    assert one(dl, image_server.url(path)) == Download(FETCH_ERROR, f"HTTP {code}", None)
    assert image_server.count(path) == 1


def test_server_errors_are_retried_then_reported(dl, image_server, key):
    path = f"/500?k={key}"
    assert one(dl, image_server.url(path)) == Download(FETCH_ERROR, "HTTP 500", None)
    assert image_server.count(path) == 3  # retries=2


@pytest.mark.parametrize("code, fails", [(429, 1), (503, 2)])
def test_transient_errors_are_retried(dl, image_server, sample_images, key, code, fails):
    path = f"/flaky-{code}?key={key}&fails={fails}"
    assert one(dl, image_server.url(path)) == Download(OK, None, sample_images["jpeg_rgb"].data)
    assert image_server.count(path) == fails + 1


def test_retries_are_bounded(dl, image_server, key):
    path = f"/flaky-503?key={key}&fails=5"
    assert one(dl, image_server.url(path)) == Download(FETCH_ERROR, "HTTP 503", None)
    assert image_server.count(path) == 3


def test_retry_after_is_honoured(dl, image_server, key):
    path = f"/flaky-429?key={key}&fails=1&retry_after=1"
    start = time.monotonic()
    assert one(dl, image_server.url(path)).status == OK
    assert time.monotonic() - start >= 1.0
    assert image_server.count(path) == 2


def test_retry_after_beyond_the_deadline_gives_up_at_once(dl, image_server, key):
    path = f"/flaky-429?key={key}&fails=1&retry_after=60"
    start = time.monotonic()
    assert one(dl, image_server.url(path)) == Download(FETCH_ERROR, "HTTP 429", None)
    assert time.monotonic() - start < 1.0
    assert image_server.count(path) == 1


def test_backoff_never_sleeps_past_the_deadline(image_server, key):
    path = f"/flaky-503?key={key}&fails=9"
    with make(backoff=0.4, retries=9, deadline=1.0) as downloader:  # sleeps 0.4, then 0.8 would pass it
        start = time.monotonic()
        assert one(downloader, image_server.url(path)) == Download(FETCH_ERROR, "HTTP 503", None)
    assert time.monotonic() - start < 1.0
    assert image_server.count(path) == 2


def test_read_timeouts_are_retried(dl, image_server, key):
    path = f"/stall?k={key}"
    start = time.monotonic()
    assert one(dl, image_server.url(path)) == Download(FETCH_ERROR, "timed out after 0.5s", None)
    assert time.monotonic() - start < 2.5
    assert image_server.count(path) == 3


def test_read_timeouts_mid_body_are_retried(image_server, key):
    path = f"/trickle?k={key}"
    with make(timeout=0.1) as downloader:  # the headers come at once, then a byte every 0.2 s
        assert one(downloader, image_server.url(path)) == Download(FETCH_ERROR, "timed out after 0.1s", None)
    assert image_server.count(path) == 3


def test_deadline_stops_a_trickling_server(image_server):
    with make(timeout=1.0, deadline=1.5) as downloader:  # each byte arrives well within the read timeout
        start = time.monotonic()
        assert one(downloader, image_server.url("/trickle")) == Download(FETCH_ERROR, "deadline of 1.5s exceeded", None)
        assert 1.4 <= time.monotonic() - start < 2.5


def test_refused_connections_are_not_retried(closed_port_url):
    with make(backoff=1.0) as downloader:  # a retry would take at least a second
        start = time.monotonic()
        result = one(downloader, closed_port_url)
    assert result.status == FETCH_ERROR and result.error.endswith(": Connection refused")
    assert time.monotonic() - start < 0.9


# --- redirects ---------------------------------------------------------------------------------------


def test_redirect_chain_within_the_limit(dl, image_server, sample_images):
    assert one(dl, image_server.url("/redirect-chain?n=3")) == Download(OK, None, sample_images["jpeg_rgb"].data)


def test_too_many_redirects(dl, image_server):
    assert one(dl, image_server.url("/redirect-chain?n=4")) == Download(FETCH_ERROR, "too many redirects", None)


def test_redirect_loop(dl, image_server):
    before = image_server.count("/redirect-loop")
    assert one(dl, image_server.url("/redirect-loop")) == Download(FETCH_ERROR, "too many redirects", None)
    assert image_server.count("/redirect-loop") - before == 4  # the first request and three redirects


@pytest.mark.parametrize(
    "target, status, error",
    [
        ("http://169.254.169.254/latest/meta-data/", BLOCKED, "169.254.169.254 is not a public address"),
        ("http://10.0.0.1/x.jpg", BLOCKED, "10.0.0.1 is not a public address"),
        ("http://[::ffff:a9fe:a9fe]/", BLOCKED, "::ffff:a9fe:a9fe is not a public address"),
        ("http://2852039166/", INVALID_URL, "bad redirect: '2852039166' is not a canonical IPv4 address"),
        ("ftp://x/a.jpg", INVALID_URL, "bad redirect: unsupported scheme 'ftp'"),
        ("file:///etc/passwd", INVALID_URL, "bad redirect: unsupported scheme 'file'"),
    ],
)
def test_redirect_targets_are_checked(dl, image_server, target, status, error):
    assert one(dl, image_server.url(f"/redirect-to?url={quote(target, safe='')}")) == Download(status, error, None)


def test_redirect_to_an_allowed_name_is_followed(dl, image_server, sample_images):
    target = image_server.url("/img/bmp").replace("127.0.0.1", "localhost")  # through the resolver
    result = one(dl, image_server.url(f"/redirect-to?url={quote(target, safe='')}"))
    assert result == Download(OK, None, sample_images["bmp"].data)


# --- address policy ----------------------------------------------------------------------------------


def test_loopback_is_blocked_by_default(image_server, key):
    path = f"/img/png_rgb?blocked={key}"
    port = image_server.base.rsplit(":", 1)[1]
    with make(policy=AddressPolicy()) as downloader:
        results = downloader.fetch_all(
            [
                image_server.url(path),  # literal address: aiohttp skips the resolver for these
                f"http://localhost:{port}{path}",  # a name: the resolver drops 127.0.0.1
                f"http://[::1]:{port}{path}",
                f"http://[::ffff:127.0.0.1]:{port}{path}",
            ]
        )
    assert [(r.status, r.error) for r in results] == [
        (BLOCKED, "127.0.0.1 is not a public address"),
        (BLOCKED, "127.0.0.1 is not a public address"),
        (BLOCKED, "::1 is not a public address"),
        (BLOCKED, "::ffff:127.0.0.1 is not a public address"),
    ]
    assert image_server.count(path) == 0


# Hosts that getaddrinfo (inet_aton) and browsers read as 127.0.0.1, though not written as it.
HIDDEN_LOOPBACK = [
    ("0x7f000001", "0x7f000001"),  # hex, whole
    ("0x7f.1", "0x7f.1"),  # hex, shortened
    ("0X7F.0.0.1", "0x7f.0.0.1"),  # hex, upper case
    ("0177.0.0.1", "0177.0.0.1"),  # octal
    ("017700000001", "017700000001"),  # octal, whole
    ("127.1", "127.1"),  # shortened
    ("127.0.1", "127.0.1"),
    ("2130706433", "2130706433"),  # decimal, whole
    ("127.0x0.01", "127.0x0.01"),  # mixed
    ("127.0.0.1.", "127.0.0.1."),  # trailing dot
    ("０ｘ７ｆ．１", "0x7f.1"),  # full-width: IDNA maps it to ASCII
    ("１２７。１", "127.1"),
]


@pytest.mark.parametrize("host, ascii_host", HIDDEN_LOOPBACK)
def test_non_canonical_ipv4_hosts_are_invalid_even_where_allowed(dl, image_server, key, host, ascii_host):
    """`dl` allows 127.0.0.0/8: these hosts are refused for their form, not for where they lead."""
    port = image_server.base.rsplit(":", 1)[1]
    path = f"/img/bmp?hidden={key}"
    assert one(dl, f"http://{host}:{port}{path}") == Download(
        INVALID_URL, f"{ascii_host!r} is not a canonical IPv4 address", None)
    target = quote(f"http://{ascii_host}:{port}{path}", safe="")  # a Location header is ASCII
    assert one(dl, image_server.url(f"/redirect-to?url={target}&k={key}")) == Download(
        INVALID_URL, f"bad redirect: {ascii_host!r} is not a canonical IPv4 address", None)
    assert image_server.count(path) == 0
    assert image_server.count(f"/redirect-to?url={target}&k={key}") == 1  # the redirect itself was fetched


@pytest.mark.parametrize("url", ["http://0x7f.1.invalid/a.jpg", "http://cdn.0x7g/a.jpg", "http://0x.example/a.jpg",
                                 "http://1e100.net/a.jpg", "http://127.0.0.1.example/a.jpg", "http://[::ffff:7f00:1]/"])
def test_hosts_whose_last_label_is_not_a_number_are_names(url):
    assert check_url(url) == url


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "127。0。0。1", "0x7f.1.invalid"])
def test_canonical_addresses_and_names_are_fetched(dl, image_server, sample_images, host):
    port = image_server.base.rsplit(":", 1)[1]
    result = one(dl, f"http://{host}:{port}/img/bmp")
    if host.endswith(".invalid"):  # a name, looked up as one (and never found)
        assert result.status == FETCH_ERROR and result.error.startswith("DNS lookup of 0x7f.1.invalid failed")
    else:
        assert result == Download(OK, None, sample_images["bmp"].data)


def test_names_resolving_to_allowed_networks_are_fetched(dl, image_server, sample_images):
    port = image_server.base.rsplit(":", 1)[1]
    assert one(dl, f"http://localhost:{port}/img/bmp") == Download(OK, None, sample_images["bmp"].data)


class _FakeResolver:
    def __init__(self, *addresses: str):
        self.addresses = addresses

    async def resolve(self, host, port=0, family=0):
        return [dict(hostname=host, host=a, port=port, family=0, proto=0, flags=0) for a in self.addresses]

    async def close(self):
        pass


def test_policy_resolver_drops_refused_addresses():
    """DNS rebinding: whatever a name resolves to at connect time goes through the policy."""
    resolver = PolicyResolver(AddressPolicy(), _FakeResolver("127.0.0.1", "8.8.8.8", "169.254.169.254"))
    assert [r["host"] for r in asyncio.run(resolver.resolve("rebind.example", 80))] == ["8.8.8.8"]
    resolver = PolicyResolver(AddressPolicy(), _FakeResolver("169.254.169.254", "10.0.0.1"))
    with pytest.raises(BlockedAddressError, match=r"^169\.254\.169\.254 is not a public address$"):
        asyncio.run(resolver.resolve("rebind.example", 80))
    assert asyncio.run(PolicyResolver(AddressPolicy(), _FakeResolver()).resolve("nothing.example")) == []


# --- body size ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/big",  # refused from its Content-Length
        "/big_chunked",  # no Content-Length: cut off while reading
        "/huge-length",  # claims a terabyte
        "/gzip?zeros=1000000",  # 1 kB on the wire, 1 MB decoded: the cap is on decoded bytes
    ],
)
def test_body_size_cap(dl, image_server, path):
    start = time.monotonic()
    assert one(dl, image_server.url(path)) == Download(FETCH_ERROR, "body larger than 100000 bytes", None)
    assert time.monotonic() - start < 1.0


def test_gzip_is_decoded(dl, image_server, sample_images):
    assert one(dl, image_server.url("/gzip?image=1")) == Download(OK, None, sample_images["jpeg_rgb"].data)


# --- opt-outs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tags, expected",
    [
        (["noai"], Download(OPTED_OUT, "X-Robots-Tag: noai", None)),
        (["nofollow", "noimageai"], Download(OPTED_OUT, "X-Robots-Tag: nofollow, noimageai", None)),
        (["laion-coco-builder: noimageai"], Download(OPTED_OUT, "X-Robots-Tag: laion-coco-builder: noimageai", None)),
        (["otherbot: noai"], None),
        (["nofollow"], None),
    ],
)
def test_x_robots_tag(dl, image_server, sample_images, tags, expected):
    url = image_server.url("/robots?" + "&".join(f"tag={quote(t)}" for t in tags))
    assert one(dl, url) == (expected or Download(OK, None, sample_images["jpeg_rgb"].data))


def test_opted_out_body_is_not_downloaded(dl, image_server, key):
    size = 64 * 2**20
    path = f"/robots?tag=noai&size={size}&k={key}"
    assert one(dl, image_server.url(path)).status == OPTED_OUT
    assert image_server.wait_finished(path)
    assert image_server.bytes_sent[path] < size // 4  # at most what the socket buffers took


def test_opt_outs_can_be_ignored(image_server, sample_images):
    with make(respect_optouts=False) as downloader:
        result = one(downloader, image_server.url("/robots?tag=noai"))
    assert result == Download(OK, None, sample_images["jpeg_rgb"].data)


# --- one request per URL ----------------------------------------------------------------------------


def test_a_url_repeated_in_a_call_is_requested_once(dl, image_server, sample_images, key):
    path = f"/img/webp?k={key}"
    results = dl.fetch_all([image_server.url(path)] * 300 + [image_server.url(f"/404?k={key}")] * 300)
    assert results == ([Download(OK, None, sample_images["webp"].data)] * 300
                       + [Download(FETCH_ERROR, "HTTP 404", None)] * 300)
    assert (image_server.count(path), image_server.count(f"/404?k={key}")) == (1, 1)


def test_recent_outcomes_are_reused_across_calls(dl, image_server, sample_images, key):
    """Successes and failures alike: a URL that failed a moment ago is not asked for again either."""
    urls = {path: image_server.url(path) for path in (f"/img/bmp?k={key}", f"/500?k={key}", f"/stall?k={key}")}
    for _ in range(3):
        results = dl.fetch_all([url for url in urls.values() for _ in range(100)])
        assert results == ([Download(OK, None, sample_images["bmp"].data)] * 100
                           + [Download(FETCH_ERROR, "HTTP 500", None)] * 100
                           + [Download(FETCH_ERROR, "timed out after 0.5s", None)] * 100)
    assert [image_server.count(path) for path in urls] == [1, 3, 3]  # the first calls' attempts (retries=2), only


def test_a_request_in_flight_is_shared_with_other_threads(image_server, sample_images, key):
    path = f"/sleep?s=0.3&k={key}"  # under the read timeout: one attempt, while every thread asks
    results: list = []
    with make(recent_bytes=0) as downloader:  # no outcome is kept: only sharing the request in flight can help
        threads = [threading.Thread(target=lambda: results.extend(downloader.fetch_all([image_server.url(path)] * 10)))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
    assert results == [Download(OK, None, sample_images["jpeg_rgb"].data)] * 40
    assert image_server.count(path) == 1


def test_recent_outcomes_are_bounded_in_bytes(image_server, key):
    """Room for two 20 kB bodies: the least recently used one goes; a body over the whole budget is not kept."""
    body = {i: f"/robots?size=20000&k={key}-{i}" for i in range(4)}
    with make(recent_bytes=50_000) as downloader:
        for i in (0, 1, 0, 2):  # 0 used again after 1: 1 is the least recently used when 2 comes
            assert one(downloader, image_server.url(body[i])) == Download(OK, None, bytes(20_000))
        for i in (0, 2, 1):
            assert one(downloader, image_server.url(body[i])).status == OK
        assert [image_server.count(body[i]) for i in (0, 1, 2)] == [1, 2, 1]
        huge = f"/robots?size=60000&k={key}-huge"
        for _ in range(2):
            assert one(downloader, image_server.url(huge)).status == OK
        assert image_server.count(huge) == 2


def test_without_a_window_only_a_call_shares_requests(image_server, key):
    path = f"/img/png_rgb?k={key}"
    with make(recent_bytes=0) as downloader:
        for _ in range(3):
            assert [r.status for r in downloader.fetch_all([image_server.url(path)] * 50)] == [OK] * 50
    assert image_server.count(path) == 3


# --- URLs and lifecycle ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, error",
    [
        (None, "empty URL"),
        (42, "URL must be a string, got int"),
        ("ftp://example.com/a.jpg", "unsupported scheme 'ftp'"),
        ("http://127.1/", "'127.1' is not a canonical IPv4 address"),
        ("http://2130706433/", "'2130706433' is not a canonical IPv4 address"),
        ("http://127.000.0.1/", "'127.000.0.1' is not a canonical IPv4 address"),
    ],
)
def test_invalid_urls(dl, url, error):
    assert one(dl, url) == Download(INVALID_URL, error, None)


def test_check_url_encodes_non_ascii():
    assert check_url("http://bücher.example/ü%20b.jpg") == "http://xn--bcher-kva.example/%C3%BC%20b.jpg"
    assert check_url("http://1.2.3.4/a.jpg") == "http://1.2.3.4/a.jpg"


def test_non_ascii_path_is_fetched(dl, image_server, sample_images):
    assert one(dl, image_server.url("/ü/ünïcode.png")) == Download(OK, None, sample_images["png_rgb"].data)


def test_close_is_idempotent_and_final(image_server):
    downloader = make()
    downloader.close()
    downloader.close()
    with pytest.raises(RuntimeError, match="closed"):
        downloader.fetch_all([image_server.url("/img/bmp")])


def test_dropping_a_downloader_closes_it(image_server):
    def loop_threads() -> int:
        return sum(t.name == "downloader" for t in threading.enumerate())

    before = loop_threads()
    downloader = make()
    assert one(downloader, image_server.url("/img/bmp")).status == OK
    assert loop_threads() == before + 1
    del downloader  # no reference cycles: the finalizer runs at once
    assert loop_threads() == before


def test_pickling_copies_the_settings_not_the_connections(dl, image_server, sample_images):
    """`datasets` pickles map functions (with the downloader they hold) to fingerprint them."""
    from datasets.fingerprint import Hasher

    with make() as other:
        assert Hasher.hash(dl) == Hasher.hash(other)
    with pickle.loads(pickle.dumps(dl)) as copy:
        assert copy is not dl
        assert one(copy, image_server.url("/img/bmp")) == Download(OK, None, sample_images["bmp"].data)
    assert one(dl, image_server.url("/img/bmp")).status == OK  # the original is untouched

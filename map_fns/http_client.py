"""The web-scale image downloader: many concurrent aiohttp requests on one event loop, safe on hostile URLs.

LAION URLs are billions of open-web links, many dead, slow, redirected or hostile. Each URL gets
per-attempt connect/read timeouts and an overall deadline, retries with backoff for transient failures
only (timeouts, HTTP 5xx and 429), redirects followed by hand and re-checked at every hop, a byte cap,
an `X-Robots-Tag` opt-out check before the body is read, and connects only to addresses the
`AddressPolicy` allows. A redirect to a URL on the blocklist is not followed, and a body whose hash is on it is
dropped before anything keeps it. The same URL is requested once while recent (LAION repeats URLs). A row's
failure is data (`Download.status`), never an exception.
"""

import asyncio
import functools
import logging
import os
import re
import socket
import string
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address
from urllib.parse import quote, urljoin, urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from map_fns.blocklist import Blocklist
from map_fns.images import one_line
from map_fns.net_policy import AddressPolicy
from map_fns.optout import is_opted_out
from map_fns.status import BLOCKED, BLOCKED_BY_LIST, FETCH_ERROR, INVALID_URL, OK, OPTED_OUT

log = logging.getLogger(__name__)

_URL_SAFE = string.punctuation  # keep every ASCII character as it is, existing %-escapes included
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_READ_CHUNK = 1 << 16
_LIMIT_PER_HOST = 16  # politeness: LAION has millions of URLs on a few CDNs
_DNS_CACHE_SECONDS = 300  # safe to cache: only addresses the policy allowed are cached
_DNS_THREADS = 64  # getaddrinfo blocks a thread per lookup; asyncio's default pool is small
_ENTRY_BYTES = 400  # a remembered outcome's objects and dict slot besides its texts and body (~275, tracemalloc)


def check_url(url: str | None) -> str:
    """Validate an http(s) URL and make it ASCII (IDNA host, %-encoded UTF-8 path) as browsers do."""
    if not isinstance(url, str) and url is not None:
        raise ValueError(f"URL must be a string, got {type(url).__name__}")
    if not url or not url.strip():
        raise ValueError("empty URL")
    if any(c <= " " or c == "\x7f" for c in url):
        raise ValueError("whitespace or control character in URL")
    parts = urlsplit(url)  # raises ValueError for e.g. a bad IPv6 host
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError(f"unsupported scheme {parts.scheme!r}" if parts.scheme else "no scheme in URL")
    if not parts.hostname:
        raise ValueError("no host in URL")
    parts.port  # raises ValueError for a non-numeric or out-of-range port
    if not url.isascii():
        try:
            netloc = parts.netloc.encode("idna").decode("ascii")  # also maps full-width digits and dots to ASCII
        except UnicodeError as e:
            raise ValueError(f"bad host: {one_line(e)}") from e
        path, query = quote(parts.path, safe=_URL_SAFE), quote(parts.query, safe=_URL_SAFE)
        url = urlunsplit((parts.scheme, netloc, path, query, ""))
    _check_numeric_host(urlsplit(url).hostname)
    return url


def _check_numeric_host(host: str) -> None:
    """Refuse a host that names an IPv4 address in any but the canonical dotted-decimal form.

    A host whose last label is a number is an IPv4 address to browsers (the WHATWG URL standard) and to C
    resolvers (`inet_aton`, which getaddrinfo uses), and both read hex, octal and shortened forms:
    `0x7f000001`, `0x7f.1`, `0177.0.0.1`, `127.1` and `2130706433` all reach 127.0.0.1. An address check
    that does not parse the host the same way would be judging a name, not the address connected to.
    """
    if ":" in host:  # an IPv6 address (`urlsplit` checked it), maybe ending in an IPv4 one: the policy judges it
        return
    labels = host.split(".")
    if len(labels) > 1 and not labels[-1]:  # one trailing dot
        labels.pop()
    if not (labels[-1].isdigit() or re.fullmatch("0x[0-9a-f]*", labels[-1])):  # `hostname` is lower case
        return
    try:
        if str(IPv4Address(host)) == host:
            return
    except ValueError:
        pass
    raise ValueError(f"{host!r} is not a canonical IPv4 address")


@dataclass(frozen=True)
class Download:
    """The outcome of one URL."""

    status: str  # status.OK (body fetched), FETCH_ERROR, INVALID_URL, BLOCKED or OPTED_OUT
    error: str | None  # short one-line reason, None when OK
    body: bytes | None  # only when OK


class BlockedAddressError(Exception):
    """Every address of a host is one the policy refuses: the row is BLOCKED."""


class PolicyResolver(AbstractResolver):
    """Resolve with `inner`, then drop the addresses the policy refuses.

    aiohttp connects only to addresses its resolver returns, so checking here (not before the request)
    also stops DNS rebinding: a name that answers 8.8.8.8 to a check and 127.0.0.1 to the connect.
    """

    def __init__(self, policy: AddressPolicy, inner: AbstractResolver):
        self._policy, self._inner = policy, inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.is_allowed(r["host"])]
        if results and not allowed:
            raise BlockedAddressError(f"{results[0]['host']} is not a public address")
        return allowed  # empty only when the lookup found nothing: aiohttp reports a failed connect

    async def close(self) -> None:
        await self._inner.close()


class _Failure(Exception):
    """A final outcome for the row: `status` and a one-line `reason`."""

    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


class _Transient(Exception):
    """A failure worth retrying (timeout, HTTP 5xx or 429), with the server's `Retry-After` seconds if any."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class RecentOutcomes:
    """The outcomes of the latest downloads, by URL, within a budget of bytes: bodies are counted in full (a
    count of entries would bound nothing when one body may be 32 MiB), the least recently used go first.

    Not thread-safe: the downloader touches it from its event loop thread only.
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._outcomes: OrderedDict[str, tuple[Download, int]] = OrderedDict()  # least recent first
        self._bytes = 0

    def get(self, url: str) -> Download | None:
        entry = self._outcomes.get(url)
        if entry is None:
            return None
        self._outcomes.move_to_end(url)
        return entry[0]

    def put(self, url: str, outcome: Download) -> None:
        """Remember `outcome`, forgetting the least recently used ones beyond the budget."""
        size = _ENTRY_BYTES + len(url) + len(outcome.error or "") + len(outcome.body or b"")
        if url in self._outcomes:
            self._bytes -= self._outcomes.pop(url)[1]
        if size > self.max_bytes:
            return
        self._outcomes[url] = outcome, size
        self._bytes += size
        while self._bytes > self.max_bytes:
            self._bytes -= self._outcomes.popitem(last=False)[1][1]


class Downloader:
    """Download many URLs concurrently from synchronous code; one per process, reused across batches.

    It runs its own event loop in a daemon thread, so `fetch_all` may be called from any thread (a
    background prefetch thread included) and keeps connections alive between calls. `close()` when done;
    otherwise garbage collection or interpreter exit closes it. A pickled copy opens its own.

    A URL is requested once however many rows ask for it: callers asking while it is in flight (in the
    same call, or another thread's) wait for that request, and its outcome (body or error) is then kept
    among the `recent_bytes` most recent outcomes, which later calls get without a request. This lives
    here, not in the fetch stage, because everything here runs on the event loop thread: requests in
    flight can be shared across threads without locks, and every caller of the downloader gains.
    """

    def __init__(
        self,
        *,
        timeout: float,
        deadline: float,
        max_bytes: int,
        max_redirects: int,
        retries: int,
        backoff: float,
        user_agent: str,
        concurrency: int,
        policy: AddressPolicy,
        respect_optouts: bool,
        recent_bytes: int,
        blocklist: Blocklist | None = None,
    ):
        self._settings = dict(timeout=timeout, deadline=deadline, max_bytes=max_bytes, max_redirects=max_redirects,
                              retries=retries, backoff=backoff, user_agent=user_agent, concurrency=concurrency,
                              policy=policy, respect_optouts=respect_optouts, recent_bytes=recent_bytes,
                              blocklist=blocklist)  # fmt: skip
        self._timeout, self._deadline, self._max_bytes = timeout, deadline, max_bytes
        self._max_redirects, self._retries, self._backoff = max_redirects, retries, backoff
        self._user_agent, self._policy, self._respect_optouts = user_agent, policy, respect_optouts
        self._blocklist = blocklist or None  # an empty list checks nothing
        self._recent = RecentOutcomes(recent_bytes)  # these two: only ever touched on the loop thread
        self._in_flight: dict[str, asyncio.Future[Download]] = {}
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(ThreadPoolExecutor(_DNS_THREADS, thread_name_prefix="dns"))
        self._thread = threading.Thread(target=self._loop.run_forever, name="downloader", daemon=True)
        self._thread.start()
        opened = asyncio.run_coroutine_threadsafe(self._open(concurrency), self._loop)
        self._session, self._semaphore = opened.result()
        self._finalizer = weakref.finalize(self, _shut_down, self._loop, self._thread, self._session)

    async def _open(self, concurrency: int) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        connector = aiohttp.TCPConnector(
            limit=concurrency,
            limit_per_host=_LIMIT_PER_HOST,
            resolver=PolicyResolver(self._policy, aiohttp.ThreadedResolver()),
            ttl_dns_cache=_DNS_CACHE_SECONDS,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self._user_agent},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self._timeout, sock_read=self._timeout),
            cookie_jar=aiohttp.DummyCookieJar(),  # tracking cookies are no use to us
        )
        return session, asyncio.Semaphore(concurrency)

    def fetch_all(self, urls: list[str | None]) -> list[Download]:
        """Download every URL; blocks until all are done. Results are in input order."""
        if not self._finalizer.alive:
            raise RuntimeError("Downloader is closed")
        return asyncio.run_coroutine_threadsafe(self._fetch_all(urls), self._loop).result()

    def close(self) -> None:
        """Close the connections and stop the event loop thread. Safe to call twice."""
        self._finalizer()

    def __reduce__(self):
        """Pickle the settings, not the live loop and sockets: `datasets` pickles map functions to fingerprint
        them (and to send them to worker processes), and a copy must open its own connections anyway."""
        return functools.partial(Downloader, **self._settings), ()

    def __enter__(self) -> "Downloader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    async def _fetch_all(self, urls: list[str | None]) -> list[Download]:
        return list(await asyncio.gather(*(self._fetch(url) for url in urls)))

    async def _fetch(self, url: str | None) -> Download:
        try:
            url = check_url(url)
        except ValueError as e:
            return Download(INVALID_URL, one_line(e), None)
        known = self._recent.get(url)
        if known is not None:
            return known
        request = self._in_flight.get(url)
        if request is None:
            request = self._in_flight[url] = self._loop.create_task(self._download(url))
            request.add_done_callback(functools.partial(self._settled, url))
        return await asyncio.shield(request)  # a caller cancelled does not cancel the others' request

    def _settled(self, url: str, request: asyncio.Future[Download]) -> None:
        del self._in_flight[url]
        if not request.cancelled() and request.exception() is None:
            self._recent.put(url, request.result())

    async def _download(self, url: str) -> Download:
        async with self._semaphore:  # the deadline starts once a slot is free, not while queued
            try:
                body = await asyncio.wait_for(self._follow(url), self._deadline)  # asyncio.timeout needs 3.11
            except _Failure as e:
                return Download(e.status, e.reason, None)
            except BlockedAddressError as e:
                return Download(BLOCKED, one_line(e), None)
            except asyncio.TimeoutError:  # only the deadline: per-attempt timeouts are handled in `_attempt`
                return Download(FETCH_ERROR, f"deadline of {self._deadline}s exceeded", None)
            except Exception as e:
                log.debug("fetching %s failed", url, exc_info=True)
                return Download(FETCH_ERROR, _reason(e), None)
        listed = self._blocklist.content_reason(body) if self._blocklist else None
        if listed:  # dropped here, before it is kept among the recent outcomes or decoded
            return Download(BLOCKED_BY_LIST, listed, None)
        return Download(OK, None, body)

    async def _follow(self, url: str) -> bytes:
        """Fetch `url`, following at most `max_redirects` redirects, each one validated like a new URL."""
        give_up_at = self._loop.time() + self._deadline
        for _ in range(self._max_redirects + 1):
            self._check_ip_literal(url)
            listed = self._blocklist.url_reasons([url])[0] if self._blocklist else None
            if listed:  # a redirect's target (the fetch stage never hands over a listed URL)
                raise _Failure(BLOCKED_BY_LIST, listed)
            result = await self._retrying(url, give_up_at)
            if isinstance(result, bytes):
                return result
            try:
                url = check_url(urljoin(url, result))
            except ValueError as e:
                raise _Failure(INVALID_URL, f"bad redirect: {one_line(e)}") from None
        raise _Failure(FETCH_ERROR, "too many redirects")

    def _check_ip_literal(self, url: str) -> None:
        """aiohttp skips the resolver for hosts that look like IP addresses (its `helpers.is_ip_address`: a colon,
        or only digits and dots, which `check_url` allows in the canonical IPv4 form only): check those here."""
        host = URL(url, encoded=True).raw_host or ""
        if (":" in host or host.replace(".", "").isdigit()) and not self._policy.is_allowed(host):
            raise _Failure(BLOCKED, f"{host} is not a public address")

    async def _retrying(self, url: str, give_up_at: float) -> bytes | str:
        """One request with retries and exponential backoff, giving up when a wait would pass the deadline."""
        attempt = 0
        while True:
            try:
                return await self._attempt(url)
            except _Transient as e:
                delay = max(self._backoff * 2**attempt, e.retry_after or 0.0)
                if attempt >= self._retries or self._loop.time() + delay >= give_up_at:
                    raise _Failure(FETCH_ERROR, e.reason) from None
                log.debug("%s: %s, retrying in %.2fs", url, e.reason, delay)
                await asyncio.sleep(delay)
                attempt += 1

    async def _attempt(self, url: str) -> bytes | str:
        """One request: the body, or the `Location` of a redirect."""
        try:
            async with self._session.get(URL(url, encoded=True), allow_redirects=False) as response:
                return await self._read(response)
        except asyncio.TimeoutError:  # aiohttp's sock_connect / sock_read timeouts (the deadline cancels instead)
            raise _Transient(f"timed out after {self._timeout}s") from None

    async def _read(self, response: aiohttp.ClientResponse) -> bytes | str:
        status = response.status
        if status in _REDIRECTS and "Location" in response.headers:
            return response.headers["Location"]
        if status == 429 or status >= 500:
            raise _Transient(f"HTTP {status}", _retry_after(response.headers.get("Retry-After", "")))
        if not 200 <= status < 300:
            raise _Failure(FETCH_ERROR, f"HTTP {status}")
        tags = response.headers.getall("X-Robots-Tag", [])
        if self._respect_optouts and is_opted_out(tags, self._user_agent):
            response.close()  # drop the connection rather than read the body
            raise _Failure(OPTED_OUT, one_line("X-Robots-Tag: " + ", ".join(tags)))
        too_big = _Failure(FETCH_ERROR, f"body larger than {self._max_bytes} bytes")
        if (response.content_length or 0) > self._max_bytes:
            response.close()
            raise too_big
        body = bytearray()
        async for chunk in response.content.iter_chunked(_READ_CHUNK):  # decoded bytes: the cap covers gzip
            body += chunk
            if len(body) > self._max_bytes:
                response.close()
                raise too_big
        return bytes(body)


def _shut_down(loop: asyncio.AbstractEventLoop, thread: threading.Thread, session: aiohttp.ClientSession) -> None:
    """Close the session, stop the loop and its thread: from `close()`, garbage collection or exit."""
    if threading.current_thread() is thread:  # the last reference went away inside the loop: cannot wait on it
        loop.create_task(session.close()).add_done_callback(lambda _: loop.stop())
        return
    asyncio.run_coroutine_threadsafe(session.close(), loop).result()
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()  # also shuts the DNS threads down, without waiting for a hung lookup


def _retry_after(value: str) -> float | None:
    """Seconds from a numeric `Retry-After`; the HTTP-date form is ignored (backoff applies)."""
    value = value.strip()
    return float(value) if value.isdigit() else None


def _reason(e: Exception) -> str:
    """A short reason: `cannot connect to host:443: Connection refused`, else the error's first line."""
    if isinstance(e, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup of {e.host} failed: {e.os_error.strerror or one_line(e.os_error)}"
    if isinstance(e, aiohttp.ClientConnectorError) and not isinstance(e, aiohttp.ClientSSLError):
        errno = e.os_error.errno
        cause = os.strerror(errno) if isinstance(errno, int) and errno > 0 else one_line(e.os_error)
        return f"cannot connect to {e.host}:{e.port}: {cause}"
    return one_line(e)

"""The loopback image server and sample images: fixtures shared by the fetch tests and the end-to-end build."""

import errno
import gzip
import io
import os
import socket
import struct
import sys
import threading
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from PIL import Image

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)
STALL_SECONDS = 10.0  # well over the tests' fetch timeout; cut short at teardown
TRICKLE_SECONDS = 0.2  # /trickle sends one byte this often: never a read timeout, but slower than any deadline


@dataclass
class Sample:
    data: bytes
    size: tuple[int, int]  # (width, height) after decoding, EXIF orientation applied
    content_type: str


def _save(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


_PNG_TYPES = {"1": (1, 0), "L": (8, 0), "RGB": (8, 2), "RGBA": (8, 6)}  # Pillow mode -> (bit depth, colour type)


def _png_claiming(width: int, height: int, mode: str = "1") -> bytes:
    """A tiny PNG whose header claims `width` x `height` pixels of `mode`: a decompression bomb, without the bomb
    (loading it fails: it has no pixel data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, *_PNG_TYPES[mode], 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _make_samples() -> dict[str, Sample]:
    rgba = Image.new("RGBA", (30, 20), (*GREEN, 255))
    rgba.putpixel((0, 0), (*RED, 0))  # fully transparent: must come out white
    p_transparent = Image.new("P", (26, 14), 1)
    p_transparent.putpalette([*RED, *BLUE] + [0] * 762)
    p_transparent.putpixel((0, 0), 0)
    frames = [Image.new("RGB", (16, 12), RED), Image.new("RGB", (16, 12), BLUE)]
    upright_left = Image.new("RGB", (60, 40), BLUE)  # stored lying on its left side, red block top-left...
    upright_left.paste(RED, (0, 0, 15, 15))  # ...which is the top-right corner once displayed upright
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    i16 = Image.new("I;16", (18, 10), 40000)
    return {
        "jpeg_rgb": Sample(_save(Image.new("RGB", (64, 48), RED), "JPEG"), (64, 48), "image/jpeg"),
        "jpeg_l": Sample(_save(Image.new("L", (33, 17), 128), "JPEG"), (33, 17), "image/jpeg"),
        "jpeg_cmyk": Sample(_save(Image.new("CMYK", (40, 30), (0, 255, 255, 0)), "JPEG"), (40, 30), "image/jpeg"),
        "jpeg_exif6": Sample(_save(upright_left, "JPEG", exif=exif), (40, 60), "image/jpeg"),
        "png_rgb": Sample(_save(Image.new("RGB", (50, 25), BLUE), "PNG"), (50, 25), "image/png"),
        "png_rgba": Sample(_save(rgba, "PNG"), (30, 20), "image/png"),
        "png_la": Sample(_save(Image.new("LA", (12, 9), (0, 0)), "PNG"), (12, 9), "image/png"),
        "png_l": Sample(_save(Image.new("L", (21, 11), 200), "PNG"), (21, 11), "image/png"),
        "png_p": Sample(_save(Image.new("RGB", (22, 13), GREEN).convert("P"), "PNG"), (22, 13), "image/png"),
        "png_p_transparent": Sample(_save(p_transparent, "PNG", transparency=0), (26, 14), "image/png"),
        "png_i16": Sample(_save(i16, "PNG"), (18, 10), "image/png"),
        "webp": Sample(_save(Image.new("RGB", (35, 19), GREEN), "WEBP"), (35, 19), "image/webp"),
        "gif_animated": Sample(
            _save(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0),
            (16, 12),
            "image/gif",
        ),
        "bmp": Sample(_save(Image.new("RGB", (17, 9), RED), "BMP"), (17, 9), "image/bmp"),
    }


@pytest.fixture(scope="session")
def sample_images() -> dict[str, Sample]:
    return _make_samples()


@pytest.fixture(scope="session")
def png_claiming():
    return _png_claiming


@pytest.fixture(scope="session")
def bomb_png() -> bytes:
    return _png_claiming(20000, 20000)


@pytest.fixture(scope="session")
def closed_port_url() -> str:
    """A URL on a port nothing listens on: fetching it fails with 'connection refused'."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/never-fetched.jpg"


@dataclass
class ImageServer:
    base: str  # http://127.0.0.1:PORT
    aliases: tuple[str, ...] = ()  # other loopback hosts serving the same routes at PORT: 127.0.0.2, [::1] if any
    requests: list[tuple[str, str]] = field(default_factory=list)  # (raw path, User-Agent) of every request
    client_ports: list[tuple[str, int]] = field(default_factory=list)  # (raw path, client port): connection reuse
    bytes_sent: Counter = field(default_factory=Counter)  # raw path -> body bytes written (streamed routes)
    finished: defaultdict = field(default_factory=lambda: defaultdict(threading.Event))  # raw path -> handler done
    flaky_hits: Counter = field(default_factory=Counter)  # /flaky-* `key` -> requests so far
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base + path

    def url_at(self, host: str, path: str) -> str:
        """`path` at one of the `aliases`. The guard's tests use them with only 127.0.0.1 allowed: a request that
        got through would be seen."""
        return self.base.replace("127.0.0.1", host, 1) + path

    def count(self, path: str) -> int:
        """How many requests asked for exactly `path` (query included): give each test its own query."""
        return sum(1 for p, _ in self.requests if p == path)

    def wait_finished(self, path: str, timeout: float = 5.0) -> bool:
        """Wait until the handler of a request for `path` returned (bytes_sent is then final)."""
        with self.lock:
            event = self.finished[path]
        return event.wait(timeout)


@pytest.fixture(scope="session")
def image_server(sample_images, bomb_png):
    """A real ThreadingHTTPServer on 127.0.0.1 serving good and bad images; see `routes` and `_respond`.

    Parameterised routes (query string): `/flaky-429` and `/flaky-503?key=K&fails=N[&retry_after=S]` fail
    the first N requests for key K, then serve a JPEG; `/redirect-chain?n=N` redirects N times, then
    serves a JPEG; `/redirect-to?url=U` redirects to U; `/robots?tag=T[&tag=T2][&size=N]` sends each
    `X-Robots-Tag: T` and a JPEG (or N zero bytes, counted in `bytes_sent`); `/gzip?zeros=N` and
    `/gzip?image=1` send gzip-encoded bodies; `/sleep?s=S` answers after S seconds.
    """
    jpeg = sample_images["jpeg_rgb"].data
    noisy_jpeg = _save(Image.effect_noise((256, 256), 64).convert("RGB"), "JPEG")
    routes: dict[str, tuple[int, str, bytes]] = {  # path -> (status, content type, body)
        **{f"/img/{name}": (200, s.content_type, s.data) for name, s in sample_images.items()},
        "/ü/ünïcode.png": (200, "image/png", sample_images["png_rgb"].data),
        "/403": (403, "text/html", b"<h1>Forbidden</h1>"),
        "/404": (404, "text/html", b"<h1>Not Found</h1>"),
        "/500": (500, "text/plain", b"oops"),
        "/html": (200, "text/html", b"<!doctype html><html><body>not an image</body></html>"),
        "/empty": (200, "image/jpeg", b""),
        "/random": (200, "image/jpeg", os.urandom(4096)),
        "/truncated": (200, "image/jpeg", noisy_jpeg[: len(noisy_jpeg) // 2]),
        "/bomb": (200, "image/png", bomb_png),
        "/big": (200, "image/jpeg", os.urandom(200_000)),
    }
    stop = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            server.requests.append((self.path, self.headers.get("User-Agent", "")))
            server.client_ports.append((self.path, self.client_address[1]))
            split = urlsplit(self.path)
            try:
                self._respond(unquote(split.path), {k: v[-1] for k, v in parse_qs(split.query).items()})
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout, size cap, opt-out)
                self.close_connection = True
            finally:
                with server.lock:
                    server.finished[self.path].set()

        def _respond(self, path: str, query: dict[str, str]):
            if path == "/stall":
                stop.wait(STALL_SECONDS)
                self._send(200, "image/jpeg", jpeg)
            elif path == "/sleep":
                stop.wait(float(query["s"]))
                self._send(200, "image/jpeg", jpeg)
            elif path == "/redirect":
                self._send(302, "text/plain", b"", location="/img/jpeg_rgb")
            elif path == "/redirect-chain":
                n = int(query["n"])
                if n > 0:
                    self._send(302, "text/plain", b"", location=f"/redirect-chain?n={n - 1}")
                else:
                    self._send(200, "image/jpeg", jpeg)
            elif path == "/redirect-loop":
                self._send(301, "text/plain", b"", location="/redirect-loop")
            elif path == "/redirect-to":
                self._send(302, "text/plain", b"", location=query["url"])
            elif path in ("/flaky-429", "/flaky-503"):
                with server.lock:
                    server.flaky_hits[query["key"]] += 1
                    failing = server.flaky_hits[query["key"]] <= int(query["fails"])
                if failing:
                    headers = {"Retry-After": query["retry_after"]} if "retry_after" in query else {}
                    self._send(int(path[-3:]), "text/plain", b"try again later", headers=headers)
                else:
                    self._send(200, "image/jpeg", jpeg)
            elif path == "/trickle":  # a valid Content-Length, then one byte at a time
                self._start(200, "image/jpeg", len(jpeg))
                for i in range(len(jpeg)):
                    if stop.wait(TRICKLE_SECONDS):
                        break
                    self.wfile.write(jpeg[i : i + 1])
            elif path == "/robots":
                tags = parse_qs(urlsplit(self.path).query).get("tag", [])
                size = int(query["size"]) if "size" in query else None
                self._start(200, "image/jpeg", len(jpeg) if size is None else size, {"X-Robots-Tag": tags})
                if size is None:
                    self.wfile.write(jpeg)
                else:
                    self._write_zeros(size)
            elif path == "/huge-length":  # lies: claims a terabyte, sends a few bytes, hangs up
                self._start(200, "image/jpeg", 10**12)
                self.wfile.write(jpeg[:100])
                self.close_connection = True
            elif path == "/gzip":
                raw = jpeg if "image" in query else bytes(int(query["zeros"]))
                self._send(200, "image/jpeg", gzip.compress(raw), headers={"Content-Encoding": "gzip"})
            elif path == "/big_chunked":  # no Content-Length: only the capped read can stop it
                self._send_chunked(os.urandom(200_000))
            else:
                self._send(*routes.get(path, (404, "text/plain", b"no such route")))

        def _start(self, status: int, content_type: str, length: int, headers: dict | None = None):
            """Send the status line and headers; a list value sends that header once per item."""
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(length))
            for name, values in (headers or {}).items():
                for value in values if isinstance(values, list) else [values]:
                    self.send_header(name, value)
            self.end_headers()

        def _send(self, status: int, content_type: str, body: bytes, location: str | None = None, headers=None):
            headers = {**(headers or {}), **({"Location": location} if location else {})}
            self._start(status, content_type, len(body), headers)
            self.wfile.write(body)

        def _write_zeros(self, size: int):
            chunk = bytes(1 << 16)
            while size > 0:
                n = min(size, len(chunk))
                self.wfile.write(chunk[:n])
                size -= n
                with server.lock:
                    server.bytes_sent[self.path] += n

        def _send_chunked(self, body: bytes):
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for i in range(0, len(body), 8192):
                piece = body[i : i + 8192]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")

        def log_message(self, format, *args):  # keep test output quiet
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 drops connections when a whole batch connects at once

        def handle_error(self, request, client_address):
            if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up is normal here
                super().handle_error(request, client_address)

    class ServerV6(Server):
        address_family = socket.AF_INET6

    servers = _listen_on_loopbacks(Server, ServerV6, Handler)
    server = ImageServer(base=f"http://127.0.0.1:{servers[0].server_address[1]}",
                         aliases=("127.0.0.2", "[::1]")[: len(servers) - 1])
    threads = [threading.Thread(target=httpd.serve_forever, daemon=True) for httpd in servers]
    for thread in threads:
        thread.start()
    try:
        yield server
    finally:
        stop.set()
        for httpd, thread in zip(servers, threads):
            httpd.shutdown()
            httpd.server_close()
            thread.join(timeout=5)


def _listen_on_loopbacks(server_v4, server_v6, handler, attempts: int = 5) -> list:
    """Servers at one free port on 127.0.0.1, 127.0.0.2 and, where the machine has IPv6, [::1] (a port free on
    the first may be taken on another: then try another port)."""
    for _ in range(attempts):
        servers = [server_v4(("127.0.0.1", 0), handler)]
        port = servers[0].server_address[1]
        try:
            servers.append(server_v4(("127.0.0.2", port), handler))
            try:
                servers.append(server_v6(("::1", port), handler))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise
            return servers
        except OSError:
            for httpd in servers:
                httpd.server_close()
    raise OSError(f"no port free on all of 127.0.0.1, 127.0.0.2 and [::1] in {attempts} attempts")

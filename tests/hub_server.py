"""A loopback Hub-compatible server, driven in tests only through the real huggingface_hub and datasets clients.

It answers, the way the Hub does, the routes of HUB_TEST_SERVER.md that these clients use to create repos and
branches, commit, list and download (paths-info, whoami and deletions are left out: nothing here uses them).
It keeps each repo's branches and commit history in memory, applies a commit all-or-nothing, counts the LFS
uploads it stored per oid, and can drop LFS PUT connections to cut a push off mid-way. For tests of downloading
clients it can hold a folder as a ready-made repo, gate a repo (its files and auth-check refused as the Hub
refuses them to users who have not accepted its terms), and answer every request 503 as during an outage,
counting requests.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sys
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".parquet", ".arrow", ".png", ".jpg", ".jpeg", ".webp", ".gif", ".safetensors", ".bin", ".zst")
LFS_MIN_SIZE = 10 * 2**20
GITATTRIBUTES = b"".join(b"*%s filter=lfs diff=lfs merge=lfs -text\n" % s.encode() for s in LFS_SUFFIXES)
_TYPE = r"(?P<type>datasets|models|spaces)"
_REPO = r"(?P<ns>[^/]+)/(?P<name>[^/]+)"
_PREFIX = r"(?:(?P<pfx>datasets|spaces)/)?"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _folder_entry(path: str) -> dict:
    return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def _goes_to_lfs(path: str, sample: bytes, size: int) -> bool:
    """The server's choice, as the Hub's: LFS for the suffixes .gitattributes lists, binary content, or size."""
    return path.endswith(LFS_SUFFIXES) or b"\0" in sample or size >= LFS_MIN_SIZE


@dataclass(frozen=True)
class StoredFile:
    oid: str  # git blob sha1: of the content, or of the LFS pointer for LFS files
    size: int
    sha256: str | None = None  # LFS files only: the object's oid in the LFS store
    content: bytes | None = None  # regular files only

    @classmethod
    def regular(cls, content: bytes) -> StoredFile:
        return cls(git_blob_sha1(content), len(content), content=content)

    @classmethod
    def lfs(cls, sha256: str, size: int) -> StoredFile:
        """An LFS file, stored in git as its pointer."""
        pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()
        return cls(git_blob_sha1(pointer), size, sha256=sha256)

    def entry(self, path: str) -> dict:
        """The file as the tree route lists it."""
        lfs = {"lfs": {"oid": self.sha256, "size": self.size, "pointerSize": 134}} if self.sha256 else {}
        return {"type": "file", "path": path, "oid": self.oid, "size": self.size, **lfs}


@dataclass(frozen=True)
class Commit:
    oid: str
    title: str
    parent: str | None
    files: dict[str, StoredFile]  # the whole tree after this commit
    changed: tuple[str, ...]  # paths this commit added, replaced or deleted
    date: str = field(default_factory=_now)


@dataclass
class Repo:
    repo_type: str  # "datasets", "models" or "spaces", as in the API routes
    repo_id: str
    private: bool
    gated: bool = False  # files are refused to everyone: no user has accepted the repo's terms
    branches: dict[str, str] = field(default_factory=dict)  # name -> head commit oid
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content

    def commit(self, rev: str) -> Commit | None:
        """The commit a revision names: a branch, or a commit oid."""
        return self.commits.get(self.branches.get(rev, rev))

    def history(self, branch: str = "main") -> list[Commit]:
        """The branch's commits, oldest first."""
        commits, oid = [], self.branches[branch]
        while oid:
            commits.append(self.commits[oid])
            oid = self.commits[oid].parent
        return commits[::-1]

    def add_commit(self, branch: str, title: str, files: dict[str, StoredFile], changed: list[str]) -> Commit:
        parent = self.branches.get(branch)
        commit = Commit(uuid.uuid4().hex + uuid.uuid4().hex[:8], title, parent, files, tuple(changed))
        self.commits[commit.oid] = commit
        self.branches[branch] = commit.oid
        return commit


class HubError(Exception):
    """An HTTP error answer; `code` goes in X-Error-Code, which the client maps to its exceptions."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class HubServer:
    """What a test sees: the URL, the token the server accepts, its repos, counters and fault switch."""

    url: str
    token: str
    home: Path  # HF_HOME for client subprocesses: their own caches, no login token
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # (type, repo_id) -> repo
    lfs_uploads: Counter = field(default_factory=Counter)  # sha256 -> LFS PUTs that were stored
    lfs_puts: int = 0  # LFS PUTs received, dropped ones included
    drop_puts: range = range(0)  # 1-based numbers of the LFS PUTs whose connection is closed unanswered
    requests: int = 0  # requests received, answered or not
    down: bool = False  # answer every request 503 Service Unavailable, as the Hub does during an outage
    lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, repo_type: str, repo_id: str, private: bool = False) -> Repo:
        """A new repo whose first commit holds the .gitattributes the Hub writes (caller holds the lock)."""
        repo = Repo(repo_type, repo_id, private)
        repo.add_commit("main", "initial commit", {".gitattributes": StoredFile.regular(GITATTRIBUTES)},
                        [".gitattributes"])
        self.repos[(repo_type, repo_id)] = repo
        return repo

    def add_repo(self, repo_id: str, folder: Path, repo_type: str = "models", gated: bool = False) -> Repo:
        """A repo holding `folder`'s files as one upload would leave them: test set-up for downloading clients."""
        with self.lock:
            repo = self.create(repo_type, repo_id)
            repo.gated = gated
            files = dict(repo.commit("main").files)
            for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
                name, content = path.relative_to(folder).as_posix(), path.read_bytes()
                if _goes_to_lfs(name, content[:512], len(content)):
                    sha256 = hashlib.sha256(content).hexdigest()
                    repo.lfs_objects[sha256] = content
                    files[name] = StoredFile.lfs(sha256, len(content))
                else:
                    files[name] = StoredFile.regular(content)
            repo.add_commit("main", "Upload folder", files, sorted(set(files) - {".gitattributes"}))
        return repo

    def drop_lfs_puts(self, first: int, count: int | None = None) -> None:
        """Close the connection, without answering, on LFS PUT number `first` (counting from now) and the
        `count - 1` after it; every later one when `count` is None."""
        with self.lock:
            start = self.lfs_puts + first
            self.drop_puts = range(start, start + count if count is not None else sys.maxsize)

    def heal(self) -> None:
        """Stop dropping LFS PUTs."""
        with self.lock:
            self.drop_puts = range(0)

    def repo(self, repo_id: str, repo_type: str = "datasets") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def env(self, token: bool = True) -> dict[str, str]:
        """The environment for a client subprocess: this server as the Hub, online, no Xet; with the server's
        token, or with no token reachable at all."""
        env = {k: v for k, v in os.environ.items() if k not in
               ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH")}
        env.update(HF_ENDPOINT=self.url, HF_HUB_DISABLE_XET="1", HF_HUB_DISABLE_TELEMETRY="1",
                   HF_HOME=str(self.home), HOME=str(self.home))
        if token:
            env["HF_TOKEN"] = self.token
        return env


def start_hub_server(home: Path) -> tuple[HubServer, ThreadingHTTPServer]:
    """Serve on a free port of 127.0.0.1 from a daemon thread; `httpd.shutdown()` stops it."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.hub = HubServer(url=f"http://127.0.0.1:{httpd.server_address[1]}", token="hf_test_" + uuid.uuid4().hex,
                          home=home)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd.hub, httpd


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    hub: HubServer

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up is normal here
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the clients keep connections alive
    server: _Server

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_PUT(self):
        self._dispatch("PUT")

    def _dispatch(self, method: str) -> None:
        hub = self.server.hub
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))  # always read, even if unused
        split = urlsplit(self.path)
        self.query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        self.authed = self.headers.get("Authorization") == f"Bearer {hub.token}"
        with hub.lock:
            hub.requests += 1
        try:
            if hub.down:
                raise HubError(503, "Service Unavailable")
            if self.headers.get("Authorization") and not self.authed:
                raise HubError(401, "Invalid credentials in Authorization header")
            for route_method, pattern, handler in _ROUTES:
                match = pattern.fullmatch(split.path)
                if match and route_method == method:
                    handler(self, body, **{k: unquote(v) for k, v in match.groupdict().items() if v is not None})
                    return
            raise HubError(404, f"no route for {method} {split.path}")
        except HubError as err:
            headers = {"X-Error-Message": str(err), **({"X-Error-Code": err.code} if err.code else {})}
            self._json({"error": str(err)}, err.status, headers)

    # -- answers

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value, status: int = 200, headers: dict | None = None) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", headers)

    # -- state lookups (callers hold the lock)

    def _repo(self, type: str, ns: str, name: str, write: bool = False) -> Repo:
        repo = self.server.hub.repos.get((type, f"{ns}/{name}"))
        if (write or (repo and repo.private)) and not self.authed:
            raise HubError(401, "Repository not found", "RepoNotFound")
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def _refuse_gated(self, repo: Repo) -> None:
        """The Hub's answer to a file of a gated repo: 401 without a login, 403 for a user not yet let in."""
        kind = "model" if repo.repo_type == "models" else repo.repo_type.removesuffix("s")
        if not self.authed:
            raise HubError(401, f"Access to {kind} {repo.repo_id} is restricted. You must have access to it and be "
                                "authenticated to access it. Please log in.", "GatedRepo")
        raise HubError(403, f"Access to {kind} {repo.repo_id} is restricted and you are not in the authorized list. "
                            f"Visit {self._repo_url(repo)} to ask for access.", "GatedRepo")

    def _commit(self, repo: Repo, rev: str) -> Commit:
        commit = repo.commit(rev)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return commit

    def _repo_url(self, repo: Repo) -> str:
        prefix = "" if repo.repo_type == "models" else repo.repo_type + "/"
        return f"{self.server.hub.url}/{prefix}{repo.repo_id}"

    # -- routes

    def create_repo(self, body: bytes) -> None:
        request = json.loads(body)
        repo_type = request.get("type", "model") + "s"
        repo_id = f"{request['organization']}/{request['name']}"
        with self.server.hub.lock:
            if not self.authed:
                raise HubError(401, "You must be authenticated to create a repo")
            existing = self.server.hub.repos.get((repo_type, repo_id))
            if existing:
                self._json({"error": "You already created this repo", "url": self._repo_url(existing)}, 409)
                return
            repo = self.server.hub.create(repo_type, repo_id, private=request.get("visibility") == "private")
        self._json({"url": self._repo_url(repo)})

    def create_branch(self, body: bytes, type: str, ns: str, name: str, branch: str) -> None:
        start = json.loads(body or b"{}").get("startingPoint", "main")
        with self.server.hub.lock:
            repo = self._repo(type, ns, name, write=True)
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = self._commit(repo, start).oid
        self._json({})

    def validate_yaml(self, body: bytes) -> None:
        self._json({"errors": [], "warnings": []})

    def repo_info(self, body: bytes, type: str, ns: str, name: str, rev: str = "main") -> None:
        with self.server.hub.lock:
            repo = self._repo(type, ns, name)
            commit = self._commit(repo, rev)
        self._json({"id": repo.repo_id, "sha": commit.oid, "private": repo.private, "lastModified": commit.date,
                    "gated": "manual" if repo.gated else False,
                    "siblings": [{"rfilename": path} for path in sorted(commit.files)]})

    def auth_check(self, body: bytes, type: str, ns: str, name: str) -> None:
        """Whether the caller may read the repo's files."""
        with self.server.hub.lock:
            repo = self._repo(type, ns, name)
            if repo.gated:
                self._refuse_gated(repo)
        self._json({})

    def preupload(self, body: bytes, type: str, ns: str, name: str, rev: str) -> None:
        with self.server.hub.lock:
            files = self._commit(self._repo(type, ns, name, write=True), rev).files
        answers = []
        for request in json.loads(body)["files"]:
            sample, path = base64.b64decode(request["sample"]), request["path"]
            lfs = _goes_to_lfs(path, sample, request["size"])
            remote = files.get(path)
            oid = remote and (remote.sha256 if lfs else remote.oid)
            answers.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                            **({"oid": oid} if oid else {})})
        self._json({"files": answers})

    def lfs_batch(self, body: bytes, ns: str, name: str, pfx: str = "models") -> None:
        request = json.loads(body)
        with self.server.hub.lock:
            repo = self._repo(pfx, ns, name, write=True)
            stored = set(repo.lfs_objects)
        answers = []
        for obj in request["objects"]:
            answer = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in stored:  # no "actions": the client does not send what the Hub has
                href = f"{self.server.hub.url}/lfs/{pfx}/{repo.repo_id}/{obj['oid']}"
                answer["actions"] = {"upload": {"href": href}, "verify": {"href": href + "/verify"}}
            answers.append(answer)
        self._json({"transfer": "basic", "objects": answers})

    def lfs_put(self, body: bytes, type: str, ns: str, name: str, oid: str) -> None:
        hub = self.server.hub
        with hub.lock:
            hub.lfs_puts += 1
            if hub.lfs_puts in hub.drop_puts:
                self.close_connection = True  # hang up without an answer, as a dying connection does
                return
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"content does not match oid {oid}")
        with hub.lock:  # no Authorization on upload hrefs, as on the Hub's storage
            hub.repos[(type, f"{ns}/{name}")].lfs_objects[oid] = body
            hub.lfs_uploads[oid] += 1
        self._send(200, b"", "text/plain")

    def lfs_verify(self, body: bytes, type: str, ns: str, name: str, oid: str) -> None:
        with self.server.hub.lock:
            repo = self._repo(type, ns, name, write=True)
            if oid not in repo.lfs_objects or len(repo.lfs_objects[oid]) != json.loads(body)["size"]:
                raise HubError(404, f"LFS object {oid} not found")
        self._json({})

    def commit(self, body: bytes, type: str, ns: str, name: str, rev: str) -> None:
        """Check every operation first, then apply them all at once: a commit is all or nothing."""
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        with self.server.hub.lock:
            repo = self._repo(type, ns, name, write=True)
            if rev not in repo.branches:
                raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
            files, changed = dict(repo.commit(rev).files), []
            for line in lines[1:]:  # after the header: one line per operation
                value = line["value"]
                if line["key"] == "file":
                    content = base64.b64decode(value["content"])
                    files[value["path"]] = StoredFile.regular(content)
                elif line["key"] == "lfsFile":
                    if value["oid"] not in repo.lfs_objects or len(repo.lfs_objects[value["oid"]]) != value["size"]:
                        raise HubError(400, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                    files[value["path"]] = StoredFile.lfs(value["oid"], value["size"])
                else:
                    raise HubError(400, f"this test server does not support {line['key']} operations")
                changed.append(value["path"])
            commit = repo.add_commit(rev, header["summary"], files, changed)
        self._json({"commitOid": commit.oid, "commitUrl": f"{self._repo_url(repo)}/commit/{commit.oid}",
                    "pullRequestUrl": None})

    def _entries(self, files: dict[str, StoredFile], folder: str, recursive: bool) -> list[dict]:
        """Files and folders under `folder` ("" for the root): its children, or everything below it."""
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict] = {}
        for path, stored in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix):].split("/")
            folders_on_the_way = len(parts) - 1 if recursive else min(len(parts) - 1, 1)
            for depth in range(1, folders_on_the_way + 1):
                sub = prefix + "/".join(parts[:depth])
                entries[sub] = _folder_entry(sub)
            if recursive or len(parts) == 1:
                entries[path] = stored.entry(path)
        return list(entries.values())

    def tree(self, body: bytes, type: str, ns: str, name: str, rev: str, path: str = "") -> None:
        with self.server.hub.lock:
            files = self._commit(self._repo(type, ns, name), rev).files
        recursive = self.query.get("recursive", "").lower() in ("1", "true")
        entries = self._entries(files, path, recursive)
        if path.strip("/") and not entries:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        self._json(entries)

    def resolve(self, body: bytes, ns: str, name: str, rev: str, path: str, pfx: str = "models") -> None:
        with self.server.hub.lock:
            repo = self._repo(pfx, ns, name)
            if repo.gated:
                self._refuse_gated(repo)
            commit = self._commit(repo, rev)
            stored = commit.files.get(path)
            if stored is None:
                raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
            data = repo.lfs_objects[stored.sha256] if stored.sha256 else stored.content
        headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.sha256 or stored.oid}"', "Accept-Ranges": "bytes"}
        if stored.sha256:
            headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
        status, data = self._range(data, headers)
        self._send(status, data, "application/octet-stream", headers)

    def _range(self, data: bytes, headers: dict) -> tuple[int, bytes]:
        """The part a `Range: bytes=A-B | A- | -N` header asks for (206), else all of it (200)."""
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if not match:
            return 200, data
        first, last = match.groups()
        start = int(first) if first else max(len(data) - int(last), 0)
        end = min(int(last), len(data) - 1) if first and last else len(data) - 1
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return 206, data[start:end + 1]


_ROUTES = [(method, re.compile(pattern), handler) for method, pattern, handler in [
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("POST", rf"/api/{_TYPE}/{_REPO}/branch/(?P<branch>[^/]+)", _Handler.create_branch),
    ("GET", rf"/api/{_TYPE}/{_REPO}(?:/revision/(?P<rev>[^/]+))?", _Handler.repo_info),
    ("GET", rf"/api/{_TYPE}/{_REPO}/auth-check", _Handler.auth_check),
    ("POST", rf"/api/{_TYPE}/{_REPO}/preupload/(?P<rev>[^/]+)", _Handler.preupload),
    ("POST", rf"/api/{_TYPE}/{_REPO}/commit/(?P<rev>[^/]+)", _Handler.commit),
    ("GET", rf"/api/{_TYPE}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", _Handler.tree),
    ("POST", rf"/{_PREFIX}{_REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("PUT", rf"/lfs/{_TYPE}/{_REPO}/(?P<oid>[0-9a-f]{{64}})", _Handler.lfs_put),
    ("POST", rf"/lfs/{_TYPE}/{_REPO}/(?P<oid>[0-9a-f]{{64}})/verify", _Handler.lfs_verify),
    ("HEAD", rf"/{_PREFIX}{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _Handler.resolve),
    ("GET", rf"/{_PREFIX}{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _Handler.resolve),
]]

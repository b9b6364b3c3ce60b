"""A loopback S3 endpoint for tests: moto's standalone server, reached by the real s3fs client.

Clients find it the way they find any S3-compatible store, through the standard AWS environment variables
(`AWS_ENDPOINT_URL`, keys, region), so the same settings serve this process and the `accelerate launch`
subprocesses the tests start. Every other AWS or fsspec-S3 setting is left out, the shared config and
credentials files point at files that do not exist and the instance-metadata lookup is off: nothing can
reach real AWS.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import s3fs
from moto.server import ThreadedMotoServer

ACCESS_KEY = "test-access-key"
SECRET_KEY = "test-secret-key"
REGION = "us-east-1"  # the one region where creating a bucket needs no location constraint


@contextmanager
def running_s3_server() -> Iterator[str]:
    """moto's S3 API served from a daemon thread on a free port of 127.0.0.1; yields its endpoint URL and stops
    the server on exit."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # else a line per request in every failure report
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@dataclass(frozen=True)
class S3Bucket:
    """A bucket on the loopback server and what a client needs to reach it."""

    url: str  # s3://NAME
    endpoint: str
    env: dict[str, str]  # the environment for a client subprocess (see `s3_environment`)

    @property
    def storage_options(self) -> dict:
        """fsspec's options for a reader that is told where the bucket is rather than reading the environment."""
        return {"client_kwargs": {"endpoint_url": self.endpoint}, "key": ACCESS_KEY, "secret": SECRET_KEY}


def create_bucket(endpoint: str, env: dict[str, str]) -> S3Bucket:
    """A new, empty bucket with a name no other test uses."""
    bucket = S3Bucket(f"s3://test-{uuid.uuid4().hex[:16]}", endpoint, env)
    s3fs.S3FileSystem(skip_instance_cache=True, **bucket.storage_options).mkdir(bucket.url)
    return bucket


def s3_environment(endpoint: str, empty_dir: Path) -> dict[str, str]:
    """`os.environ` with every AWS and fsspec-S3 setting replaced by this server's. `empty_dir` holds no files:
    the shared AWS config and credentials files named in it do not exist, and no fsspec config is read there."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("AWS_", "FSSPEC_S3")) and name != "FSSPEC_CONFIG_DIR"}
    loopback = ",".join(filter(None, [env.get("NO_PROXY", env.get("no_proxy")), "127.0.0.1"]))
    env.update(
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID=ACCESS_KEY,
        AWS_SECRET_ACCESS_KEY=SECRET_KEY,
        AWS_DEFAULT_REGION=REGION,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(empty_dir / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(empty_dir / "aws-credentials"),
        FSSPEC_CONFIG_DIR=str(empty_dir),
        NO_PROXY=loopback,  # a proxy set for the outside world must not carry loopback requests
        no_proxy=loopback,
    )
    return env

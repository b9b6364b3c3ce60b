"""Fixtures shared across the suite: tiny models built once, a loopback image server, a loopback Hub, a loopback
S3 endpoint."""

import os
from collections.abc import Iterator

import fsspec.config
import pytest
import s3fs

from builder.tiny_models import TinyModelPaths, build_tiny_models
from tests.hub_server import HubServer, start_hub_server
from tests.image_server import bomb_png, closed_port_url, image_server, png_claiming, sample_images  # noqa: F401
from tests.s3_server import S3Bucket, create_bucket, running_s3_server, s3_environment


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModelPaths:
    """The `--preset tiny` models, built offline once per session through the product's own builder."""
    return build_tiny_models(tmp_path_factory.mktemp("model-cache"))


@pytest.fixture
def hub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubServer]:
    """A fresh loopback Hub for one test (see tests/hub_server.py); point clients at it with `.env()`."""
    hub, httpd = start_hub_server(tmp_path_factory.mktemp("hf-home"))
    try:
        yield hub
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The loopback S3 server's URL (see tests/s3_server.py): started by the first test that needs it, stopped at
    the end of the session."""
    with running_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[S3Bucket]:
    """A fresh bucket on the loopback S3 server, with this process's environment pointing s3fs at it; give
    subprocesses `.env`, and readers told where to look `.storage_options`."""
    env = s3_environment(s3_endpoint, tmp_path_factory.mktemp("no-aws-config"))
    for name in set(os.environ) - set(env):
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delitem(fsspec.config.conf, "s3", raising=False)  # fsspec's config files were read at import
    s3fs.S3FileSystem.clear_instance_cache()  # an instance made before would keep its old client
    try:
        yield create_bucket(s3_endpoint, env)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()  # none bound to this bucket's settings outlives the test

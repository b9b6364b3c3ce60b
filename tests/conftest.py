"""Fixtures shared across the suite: tiny models built once, a loopback image server, a loopback Hub."""

from collections.abc import Iterator

import pytest

from builder.tiny_models import TinyModelPaths, build_tiny_models
from tests.hub_server import HubServer, start_hub_server
from tests.image_server import bomb_png, closed_port_url, image_server, png_claiming, sample_images  # noqa: F401


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

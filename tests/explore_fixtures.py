"""Fixtures and helpers of the explore tests (test_explore.py, test_explore_server.py): the built-in model, a
served studio, a headless browser, and plain HTTP requests."""

from __future__ import annotations

import http.client
import io
import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from animevae.explore.server import ExploreServer, start_server
from animevae.explore.studio import Studio
from animevae.model_files import ModelSet, open_models
from browser import Browser, find_browser

BUILTIN = ["--model", "builtin", "--device", "cpu"]


@pytest.fixture(scope="module")
def models() -> ModelSet:
    """The built-in model's decoder and encoder on the CPU, opened once for the module."""
    return open_models(Path("runs"), None, "builtin", ("decoder", "prior", "encoder"), "cpu")


@pytest.fixture
def server(models: ModelSet, tmp_path: Path) -> Iterator[ExploreServer]:
    """An explore server on a free port, saving into tmp_path/out, serving from a thread."""
    served = start_server(Studio(models, tmp_path / "out"), models.origin)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


@pytest.fixture
def browser() -> Iterator[Browser]:
    """A headless Chromium; skipped without one, except under CI (CI=true), where it must be there."""
    executable = find_browser()
    try:
        import websocket  # noqa: F401 - the driver: websocket-client, in the dev extra
    except ImportError:
        executable = None
    if executable is None:
        reason = "no headless browser: install chromium (apt-get install chromium) and websocket-client (the dev extra)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test: {reason}")
        pytest.skip(reason)
    driver = Browser(executable)
    yield driver
    driver.close()


def call(server: ExploreServer, method: str, path: str, body: bytes | dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One HTTP request to the server (Host 127.0.0.1:PORT unless `headers` say otherwise): (status, body)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    sent = {"Host": f"127.0.0.1:{server.port}", **(headers or {})}
    try:
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def error_of(answer: tuple[int, bytes]) -> str:
    """The `error` line of a refusal."""
    return json.loads(answer[1])["error"]


def png_bytes(image: Image.Image) -> bytes:
    """An image as PNG file bytes."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (with a tiny, wrong body): what a decompression bomb
    looks like before decoding."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")

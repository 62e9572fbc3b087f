"""Shared fixtures: a fresh LIMNER_HOME per test, tiny models built once per session, an in-process client."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from PIL import Image
from skimage import data

from server.app import build_server
from server.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent


def photo(name: str, width: int, height: int) -> Image.Image:
    """A scikit-image photograph (astronaut, coffee, chelsea, ...) as RGB, resized with Lanczos."""
    return (
        Image.fromarray(getattr(data, name)())
        .convert("RGB")
        .resize((width, height), Image.Resampling.LANCZOS)
    )


def saved(home: Path, image: Image.Image, name: str) -> str:
    """`image` written as a file under `home` (a path tools may read); its path."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / name
    image.save(path)
    return str(path)


def server_env(home: Path, models_path: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment for a `limner` subprocess: this one's, minus LIMNER_*, plus a tiny-profile home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIMNER_")}
    env.update(
        LIMNER_HOME=str(home), LIMNER_PROFILE="tiny", HOME=str(home.parent), PYTHONPATH=str(REPO), **extra
    )
    if models_path is not None:
        env["LIMNER_MODELS_PATH"] = str(models_path)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def models_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny models are built once per test session and shared (they are read-only after building)."""
    return tmp_path_factory.mktemp("models")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def make_settings(home: Path, models_path: Path):
    def make(**overrides: Any) -> Settings:
        # a generous max_wait_s: a loaded CI machine must not turn direct results into job handles
        flags = {"home": home, "profile": "tiny", "models_path": models_path, "max_wait_s": 600, **overrides}
        return load_settings(flags=flags, environ={})

    return make


@pytest.fixture
def settings(make_settings) -> Settings:
    return make_settings()


@asynccontextmanager
async def connect(settings: Settings, **client_kwargs: Any) -> AsyncIterator[Client]:
    async with Client(build_server(settings), **client_kwargs) as client:
        yield client


def structured(result: Any) -> dict[str, Any]:
    """The structured content of a successful tool result (fails loudly on a tool error)."""
    assert not result.is_error, result.content[0].text if result.content else result
    if result.structured_content is not None:
        return result.structured_content
    return json.loads(result.content[0].text)


def error_text(result: Any) -> str:
    assert result.is_error, f"expected a tool error, got {result.structured_content}"
    return " ".join(getattr(c, "text", "") for c in result.content)


@contextmanager
def serve_http(env: dict[str, str], token: str) -> Iterator[str]:
    """`limner serve --http` on a free loopback port with `env`, until the block ends; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--http", "--port", str(port)]
        + (["--token", token] if token else []),  # "": none, as a loopback server may run
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    listening = threading.Event()

    def drain() -> None:  # uvicorn says when it listens; keep reading so the pipe never fills
        assert proc.stderr is not None
        for line in proc.stderr:
            if "Uvicorn running on" in line:
                listening.set()
        listening.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        assert listening.wait(60) and proc.poll() is None, "the HTTP server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

"""A session sees its own calls: the session log and the gallery are per session over HTTP, the admin token
sees every session; the gallery page is written when read, not after every call; the server tells an agent
about tasks; the 2026-07-28 tasks extension works over a real HTTP server."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from mcp import Client
from mcp_types import TextResourceContents
from PIL import Image

from server.settings import SettingsError, load_settings
from server.tasks import TASK_TOOLS, TASKS_EXTENSION
from tests.conftest import connect, serve_http, server_env, structured
from tests.test_tasks import TaskPoller
from tools.core.images import ImageStore
from tools.session.gallery import Gallery, render_gallery
from tools.session.log import SessionLog

pytestmark = pytest.mark.anyio
TOKEN = "scope-s3cret"
ADMIN = "scope-adm1n"
TINY = {"width": 64, "height": 64, "steps": 1}


def gallery_ids(page: str) -> set[str]:
    return set(re.findall(r'class="card-img" data-image-id="(img_[0-9a-f]{16})"', page))


def http_client(url: str, mode: str, token: str = TOKEN, **kwargs: Any) -> Client:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    authed = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300)
    )
    return Client(streamable_http_client(url, http_client=authed), mode=mode, **kwargs)  # type: ignore[arg-type]


async def session_log(client: Client) -> dict[str, Any]:
    content = (await client.read_resource("limner://session/log")).contents[0]
    assert isinstance(content, TextResourceContents)
    return json.loads(content.text)


async def made(client: Client, prompt: str) -> str:
    return structured(await client.call_tool("generate", {"prompt": prompt, **TINY}))["candidates"][0]["id"]


@dataclass
class HttpServer:
    url: str
    base: str


@pytest.fixture(scope="module")
def scoped_server(tmp_path_factory: pytest.TempPathFactory, models_path: Path) -> Iterator[HttpServer]:
    home = tmp_path_factory.mktemp("scope") / "home"
    env = server_env(home, models_path, LIMNER_ADMIN_TOKEN=ADMIN, LIMNER_MAX_WAIT_S="600")
    with serve_http(env, TOKEN) as base:
        yield HttpServer(f"{base}/mcp", base)


# -- over HTTP: one session's log and gallery are not another's -------------------------------------------------
@pytest.mark.slow
async def test_a_second_http_session_cannot_read_the_first_sessions_log_or_gallery_and_the_admin_sees_both(
    scoped_server,
):
    async with (
        http_client(scoped_server.url, "legacy") as first,
        http_client(scoped_server.url, "legacy") as second,
        http_client(scoped_server.url, "auto") as sessionless,
        http_client(scoped_server.url, "legacy", token=ADMIN) as admin,
    ):
        mine = await made(first, "a secret red kite")
        theirs = await made(second, "a blue boat")
        nobodys = await made(sessionless, "a green bottle")
        first_log, second_log = await session_log(first), await session_log(second)
        shared_log, admin_log = await session_log(sessionless), await session_log(admin)
        admin_jobs = structured(await admin.call_tool("jobs", {"action": "list"}))["jobs"]
        second_jobs = structured(await second.call_tool("jobs", {"action": "list"}))["jobs"]
    assert first_log["images"] == [mine] and second_log["images"] == [theirs]
    assert [e["arguments"]["prompt"] for e in second_log["entries"]] == ["a blue boat"]
    assert "secret red kite" not in json.dumps(second_log) and "secret red kite" not in json.dumps(shared_log)
    assert shared_log["images"] == [nobodys] and shared_log["gallery_url_path"] == "/gallery"
    assert first_log["log_path"] is None and first_log["gallery_path"] is None  # the files hold every session
    assert {mine, theirs, nobodys} <= set(admin_log["images"]) and admin_log["log_path"]
    assert len(second_jobs) == 1 and len(admin_jobs) >= 3

    first_page, second_page = first_log["gallery_url_path"], second_log["gallery_url_path"]
    assert re.fullmatch(r"/gallery/session/[0-9a-f]{32}", first_page) and first_page != second_page
    user, operator = {"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"Bearer {ADMIN}"}
    async with httpx.AsyncClient(base_url=scoped_server.base, timeout=60) as http:
        pages = {path: (await http.get(path, headers=user)) for path in (first_page, second_page, "/gallery")}
        guessed = await http.get("/gallery/session/" + "0" * 32, headers=user)
        everything = await http.get("/gallery", headers=operator)
        unauthorised = await http.get(first_page)
    assert gallery_ids(pages[first_page].text) == {mine}
    assert (
        gallery_ids(pages[second_page].text) == {theirs} and "secret red kite" not in pages[second_page].text
    )
    assert gallery_ids(pages["/gallery"].text) == {nobodys}  # the sessionless clients' shared page
    assert guessed.status_code == 404 and unauthorised.status_code == 401
    assert everything.status_code == 200 and gallery_ids(everything.text) >= {mine, theirs, nobodys}


# -- the 2026 tasks extension over HTTP ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def task_server(tmp_path_factory: pytest.TempPathFactory, models_path: Path) -> Iterator[HttpServer]:
    home = tmp_path_factory.mktemp("scope-tasks") / "home"
    with serve_http(server_env(home, models_path, LIMNER_MAX_WAIT_S="0"), TOKEN) as base:
        yield HttpServer(f"{base}/mcp", base)


@pytest.mark.slow
async def test_a_2026_http_client_declaring_the_tasks_extension_gets_a_task_and_fetches_its_result(
    task_server,
):
    poller = TaskPoller()
    arguments = {"prompt": "a kite over the sea", "seed": 5, **TINY}
    async with http_client(task_server.url, "auto", extensions=[poller]) as client:
        assert client.server_capabilities.extensions == {TASKS_EXTENSION: {}}
        result = structured(await client.call_tool("generate", arguments))
    assert len(poller.created) == 1 and poller.created[0].status == "working"
    assert re.fullmatch(r"job_[0-9a-f]{32}", poller.created[0].task_id)
    assert result["status"] == "done" and result["candidates"][0]["seed"] == 5  # the tool's own result


# -- in-process: the page is written when read, and tells only its owner's calls -------------------------------
def test_the_gallery_file_is_rewritten_only_when_read_after_new_calls_and_then_shows_every_image(tmp_path):
    store = ImageStore(tmp_path / "images")
    log = SessionLog(tmp_path)
    gallery = Gallery(log, store, {})

    def call(shade: int, owner: str) -> str:
        ref = store.put(
            Image.fromarray(np.full((8, 8, 3), shade, dtype=np.uint8)), tool="generate", params={}
        )
        log.record(
            "generate", {"prompt": "x"}, time.time(), 0.01, result={"images": [{"id": ref.id}]}, owner=owner
        )
        return ref.id

    one = call(10, "http:a")
    assert not log.gallery_path.exists()  # a call writes nothing
    path = gallery.current()
    written = path.stat().st_mtime_ns, path.read_text()
    assert gallery.current().stat().st_mtime_ns == written[0]  # read again with no new call: not rewritten
    two = call(200, "http:b")
    assert gallery_ids(gallery.current().read_text()) == {one, two} and path.read_text() != written[1]
    assert gallery_ids(render_gallery(log, store, {}, "http:b")) == {two}
    assert log.page_owner(log.page_key("http:b")) == "http:b" and log.page_owner("0" * 32) is None


@pytest.mark.slow  # ~8 s alone: the first in-process generate imports torch and diffusers
async def test_stdio_and_in_process_clients_still_read_their_whole_log_with_the_gallery_file(settings):
    async with connect(settings) as client:
        image = await made(client, "a kite")
        log = await session_log(client)
        instructions = client.instructions or ""
    assert log["images"] == [image] and log["entries"][0]["owner"] == ""
    assert gallery_ids(Path(log["gallery_path"]).read_text()) == {image}
    assert all(tool in instructions for tool in TASK_TOOLS) and TASKS_EXTENSION in instructions


def test_an_admin_token_equal_to_the_token_is_refused_without_showing_it(tmp_path):
    environ = {
        "LIMNER_HOME": str(tmp_path),
        "LIMNER_TOKEN": "same-s3cret",
        "LIMNER_ADMIN_TOKEN": "same-s3cret",
    }
    with pytest.raises(SettingsError) as refused:
        load_settings(flags={}, environ=environ)
    assert "admin_token" in str(refused.value) and "same-s3cret" not in str(refused.value)

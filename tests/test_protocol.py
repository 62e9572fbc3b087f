"""The protocol around the tools: the server's version, MCP logging, completions, jobs that belong to their
session, and the model tools run as MCP tasks (2025-11-25)."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    METHOD_NOT_FOUND,
    EmptyResult,
    LoggingMessageNotificationParams,
    PromptReference,
    Request,
    ResourceTemplateReference,
)
from PIL import Image

from tests.conftest import connect, error_text, serve_http, server_env, structured
from tools.core.images import ImageStore

pytestmark = pytest.mark.anyio
TOKEN = "protocol-s3cret"
TINY = {"width": 64, "height": 64, "seed": 7}
LONG = {"prompt": "a lighthouse", "steps": 150, "n": 2, **TINY}  # long enough to still run when cancelled


# -- version and capabilities ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_the_server_reports_the_package_version_in_both_protocol_modes(settings, mode):
    async with connect(settings, mode=mode) as client:
        assert client.server_info is not None
        version = client.server_info.version
    assert version == importlib.metadata.version("limner") != ""


async def test_logging_completions_and_tasks_are_advertised_where_the_protocol_version_has_them(settings):
    async with connect(settings, mode="legacy") as client:  # 2025-11-25
        legacy = client.server_capabilities
        tools = {t.name: t for t in (await client.list_tools()).tools}
    async with connect(settings) as client:  # 2026-07-28: no logging/setLevel, tasks are an extension
        modern = client.server_capabilities
    assert legacy.logging is not None and legacy.completions is not None
    assert legacy.tasks is not None and legacy.tasks.requests is not None
    assert legacy.tasks.requests.tools is not None and legacy.tasks.list is not None
    assert legacy.tasks.cancel is not None
    for name in ("generate", "refine_region", "judge"):
        execution = tools[name].execution
        assert execution is not None and execution.task_support == "optional"
    assert tools["recall"].execution is None  # no model work to run as a task
    assert modern.completions is not None and modern.tasks is None


# -- logging ----------------------------------------------------------------------------------------------------
@pytest.mark.slow
async def test_log_notifications_arrive_at_the_level_set_and_none_below_it(settings, caplog):
    caplog.set_level(
        logging.INFO, logger="limner"
    )  # the server's own level (pytest leaves the root at warning)
    got: list[LoggingMessageNotificationParams] = []

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        got.append(params)

    generate = {"prompt": "a boat", "steps": 1, **TINY}
    async with connect(settings, mode="legacy", logging_callback=on_log) as client:
        await client.set_logging_level("warning")
        structured(await client.call_tool("generate", generate))  # loads the generator: logged at info
        structured(await client.call_tool("models", {"action": "unload", "role_or_model": "generator"}))
        assert [m for m in got if m.level in ("debug", "info", "notice")] == []
        quiet = len(got)
        await client.set_logging_level("info")
        structured(await client.call_tool("generate", generate))  # loads it again, now heard
    heard = [m for m in got[quiet:] if m.logger == "limner.models"]
    assert any(str(m.data).startswith("loading ") for m in heard), got
    assert all(m.level == "info" for m in heard)


@pytest.mark.slow
async def test_a_2026_client_hears_the_logs_of_a_request_only_at_the_level_it_opted_in_to(settings, caplog):
    caplog.set_level(logging.INFO, logger="limner")
    heard: dict[str, list[LoggingMessageNotificationParams]] = {"warning": [], "info": []}
    for level, into in heard.items():

        async def on_log(params: LoggingMessageNotificationParams, into=into) -> None:
            into.append(params)

        async with connect(settings, logging_callback=on_log, log_level=level) as client:
            structured(await client.call_tool("generate", {"prompt": "a boat", "steps": 1, **TINY}))
    assert heard["warning"] == []
    assert any(m.logger == "limner.models" and str(m.data).startswith("loading ") for m in heard["info"])


async def test_a_log_level_that_does_not_exist_is_refused_and_the_server_keeps_answering(settings):
    async with connect(settings, mode="legacy") as client:
        with pytest.raises(MCPError) as refused:
            await client.session.send_request(
                Request[dict[str, Any], str](method="logging/setLevel", params={"level": "loud"}), EmptyResult
            )
        assert refused.value.error.code == INVALID_PARAMS
        assert "level: 'loud' is not a log level; send one of debug, info" in refused.value.error.message
        await client.set_logging_level("error")
        assert "generate" in {t.name for t in (await client.list_tools()).tools}


# -- completions ------------------------------------------------------------------------------------------------
def store_images(settings, count: int) -> list[str]:
    """`count` stored images, oldest first (their files a second apart)."""
    store = ImageStore(settings.images_dir)
    ids = []
    for i in range(count):
        ref = store.put(Image.new("RGB", (8, 8), (40 * i, 10, 200)), tool="test")
        os.utime(store.png_path(ref.id), (1_700_000_000 + i, 1_700_000_000 + i))
        ids.append(ref.id)
    return ids


async def test_completions_offer_stored_image_ids_by_prefix_newest_first(settings):
    ids = store_images(settings, 3)
    newest_first = list(reversed(ids))
    image = ResourceTemplateReference(type="ref/resource", uri="limner://images/{image_id}")
    lineage = ResourceTemplateReference(type="ref/resource", uri="limner://images/{image_id}/lineage")
    product = PromptReference(type="ref/prompt", name="product_scene")
    async with connect(settings) as client:
        every = (await client.complete(image, {"name": "image_id", "value": "img_"})).completion
        assert every.values == newest_first and every.total == 3 and not every.has_more
        one = await client.complete(lineage, {"name": "image_id", "value": ids[1][:9]})
        assert ids[1] in one.completion.values
        assert all(v.startswith(ids[1][:9]) for v in one.completion.values)
        prompt = await client.complete(product, {"name": "product_image", "value": ""})
        assert prompt.completion.values == newest_first
        none = await client.complete(image, {"name": "image_id", "value": "img_*"})
        assert none.completion.values == []  # glob characters match nothing, literally
        scene = await client.complete(product, {"name": "scene", "value": "on a"})
        assert scene.completion.values == []  # free text: nothing to offer


@pytest.mark.parametrize(
    ("ref", "argument", "expected"),
    [
        (
            PromptReference(type="ref/prompt", name="sketch"),
            "request",
            "no prompt 'sketch'; prompts: close_context",
        ),
        (
            PromptReference(type="ref/prompt", name="product_scene"),
            "colour",
            "has no argument 'colour'; it takes",
        ),
        (
            ResourceTemplateReference(type="ref/resource", uri="limner://models/{name}"),
            "name",
            "no resource template 'limner://models/{name}'; templates: limner://images/{image_id}",
        ),
        (
            ResourceTemplateReference(type="ref/resource", uri="limner://images/{image_id}"),
            "id",
            "has no argument 'id'; it takes: image_id",
        ),
    ],
)
async def test_completing_an_unknown_prompt_template_or_argument_names_what_there_is(
    settings, ref, argument, expected
):
    async with connect(settings) as client:
        with pytest.raises(MCPError) as refused:
            await client.complete(ref, {"name": argument, "value": ""})
        assert refused.value.error.code == INVALID_PARAMS
        assert expected in refused.value.error.message
        assert "generate" in {t.name for t in (await client.list_tools()).tools}  # still answering


# -- over HTTP: sessions and tasks ----------------------------------------------------------------------------
@dataclass
class HttpServer:
    url: str
    home: Path


@pytest.fixture(scope="module")
def http_server(tmp_path_factory: pytest.TempPathFactory, models_path: Path) -> Iterator[HttpServer]:
    """`limner serve --http` with max_wait_s=0: every model call answers with a job handle at once, so a test
    holds a job that is still running without racing it."""
    home = tmp_path_factory.mktemp("protocol") / "home"
    env = server_env(home, models_path, LIMNER_MAX_WAIT_S="0")
    with serve_http(env, TOKEN) as base:
        yield HttpServer(f"{base}/mcp", home)


def sdk_client(url: str, mode: str = "legacy") -> Client:
    import httpx2

    authed = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(30, read=300)
    )
    return Client(streamable_http_client(url, http_client=authed), mode=mode)  # type: ignore[arg-type]


class RawSession:
    """A 2025-11-25 streamable HTTP session in plain JSON-RPC. The SDK's client cannot take a task: it checks a
    tools/call answer against CallToolResult, and has no tasks/* calls."""

    def __init__(self, http: httpx.AsyncClient, url: str) -> None:
        self.http, self.url, self.ids = http, url, itertools.count(1)
        self.headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "application/json, text/event-stream"}

    async def __aenter__(self) -> RawSession:
        hello = {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "raw", "version": "1"},
        }
        answer = await self.http.post(
            self.url, json=self.message("initialize", hello, 0), headers=self.headers
        )
        assert answer.status_code == 200, answer.text
        self.headers |= {
            "mcp-session-id": answer.headers["mcp-session-id"],
            "mcp-protocol-version": "2025-11-25",
        }
        self.initialized = self.reply(answer, 0)["result"]
        await self.http.post(
            self.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=self.headers
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.delete(self.url, headers=self.headers)

    @staticmethod
    def message(method: str, params: dict[str, Any], id: int) -> dict[str, Any]:
        return {"jsonrpc": "2.0", "id": id, "method": method, "params": params}

    @staticmethod
    def reply(answer: httpx.Response, id: int) -> dict[str, Any]:
        if answer.headers["content-type"].startswith("application/json"):
            return answer.json()
        for line in answer.text.splitlines():  # an SSE stream: the reply is the data line with our id
            if line.startswith("data:") and (message := json.loads(line[5:])).get("id") == id:
                return message
        raise AssertionError(f"no reply {id} in {answer.text[:500]}")

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        """The JSON-RPC reply: {"result": ...} or {"error": ...}."""
        id = next(self.ids)
        answer = await self.http.post(self.url, json=self.message(method, params, id), headers=self.headers)
        return self.reply(answer, id)

    async def result(self, method: str, **params: Any) -> dict[str, Any]:
        reply = await self.call(method, **params)
        assert "result" in reply, reply
        return reply["result"]

    async def error(self, method: str, **params: Any) -> dict[str, Any]:
        reply = await self.call(method, **params)
        assert "error" in reply, reply
        return reply["error"]


def raw_http() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(30, read=300))


@pytest.mark.slow
async def test_a_second_http_session_cannot_see_wait_on_or_cancel_the_first_sessions_job(http_server):
    async with sdk_client(http_server.url) as first, sdk_client(http_server.url) as second:
        handle = structured(await first.call_tool("generate", LONG))
        job = handle["job"]["job_id"]
        assert job in {
            j["job_id"] for j in structured(await first.call_tool("jobs", {"action": "list"}))["jobs"]
        }
        assert structured(await second.call_tool("jobs", {"action": "list"}))["jobs"] == []
        unknown = error_text(await second.call_tool("jobs", {"action": "status", "job_id": "job_999999"}))
        for action in ("status", "wait", "cancel"):
            refused = error_text(
                await second.call_tool("jobs", {"action": action, "job_id": job, "timeout_s": 1})
            )
            assert refused == unknown.replace("job_999999", job)  # the same answer as an id never made
            assert LONG["prompt"] not in refused
        status = structured(await first.call_tool("jobs", {"action": "status", "job_id": job}))["jobs"][0]
        assert status["status"] in ("queued", "running")  # the second session's cancel did nothing
        cancelled = structured(await first.call_tool("jobs", {"action": "cancel", "job_id": job}))["jobs"][0]
        assert cancelled["status"] == "cancelled"


@pytest.mark.slow
async def test_a_generate_task_completes_with_progress_and_its_result_equals_a_direct_calls(http_server):
    arguments = {"prompt": "a red kite", "steps": 3, **TINY}
    async with raw_http() as http, RawSession(http, http_server.url) as raw:
        assert raw.initialized["capabilities"]["tasks"]["requests"] == {"tools": {"call": {}}}
        progress: list[dict[str, Any]] = []

        async def listen() -> None:  # the session's standalone stream: a task's progress comes on it
            async with http.stream("GET", http_server.url, headers=raw.headers) as stream:
                async for line in stream.aiter_lines():
                    if (
                        line.startswith("data:")
                        and json.loads(line[5:]).get("method") == "notifications/progress"
                    ):
                        progress.append(json.loads(line[5:])["params"])

        async with anyio.create_task_group() as background:
            background.start_soon(listen)
            created = await raw.result(
                "tools/call",
                name="generate",
                arguments=arguments,
                task={"ttl": 60000},
                _meta={"progressToken": "p1"},
            )
            task = created["task"]
            assert task["status"] == "working" and task["taskId"]
            got = await raw.result("tasks/result", taskId=task["taskId"])  # blocks until the task ends
            with anyio.fail_after(10):
                while len(progress) < 3:  # the last notifications may trail the result
                    await anyio.sleep(0.05)
            background.cancel_scope.cancel()
        assert got["_meta"]["io.modelcontextprotocol/related-task"] == {"taskId": task["taskId"]}
        assert not got.get("isError") and got["content"][0]["type"] == "text"
        done = await raw.result("tasks/get", taskId=task["taskId"])
        assert done["status"] == "completed" and done["taskId"] == task["taskId"]
        listed = (await raw.result("tasks/list"))["tasks"]
        assert task["taskId"] in {t["taskId"] for t in listed}
    assert [p["progress"] for p in progress[:3]] == [1, 2, 3] and {p["progressToken"] for p in progress} == {
        "p1"
    }
    assert all(
        p["_meta"]["io.modelcontextprotocol/related-task"]["taskId"] == task["taskId"] for p in progress
    )
    async with sdk_client(http_server.url) as client:  # the same call made directly (a job: max_wait_s is 0)
        handle = structured(await client.call_tool("generate", arguments))
        wait = {"action": "wait", "job_id": handle["job"]["job_id"], "timeout_s": 120}
        direct = structured(await client.call_tool("jobs", wait))["result"]
    as_task = got["structuredContent"]
    assert [c["id"] for c in as_task["candidates"]] == [c["id"] for c in direct["candidates"]]
    assert {k: v for k, v in as_task.items() if k != "timings"} == {
        k: v for k, v in direct.items() if k != "timings"
    }


@pytest.mark.slow
async def test_a_cancelled_task_stops_and_only_its_session_can_reach_it(http_server):
    async with (
        raw_http() as http,
        RawSession(http, http_server.url) as raw,
        RawSession(http, http_server.url) as other,
    ):
        task = (await raw.result("tools/call", name="generate", arguments=LONG, task={}))["task"]
        unknown = await other.error("tasks/get", taskId="job_999999")
        assert unknown["code"] == INVALID_PARAMS
        for method in ("tasks/get", "tasks/result", "tasks/cancel"):
            refused = await other.error(method, taskId=task["taskId"])
            assert refused["code"] == INVALID_PARAMS
            assert refused["message"] == unknown["message"].replace("job_999999", task["taskId"])
        assert (await other.result("tasks/list"))["tasks"] == []
        cancelled = await raw.result("tasks/cancel", taskId=task["taskId"])
        assert cancelled["status"] == "cancelled"
        outcome = await raw.result("tasks/result", taskId=task["taskId"])
        assert outcome["isError"] and "cancelled at step" in outcome["content"][0]["text"]
        again = await raw.error("tasks/cancel", taskId=task["taskId"])
        assert again["code"] == INVALID_PARAMS and "already ended (cancelled)" in again["message"]


@pytest.mark.slow
async def test_a_task_for_a_tool_without_model_work_or_with_bad_arguments_is_a_clear_refusal(http_server):
    async with raw_http() as http, RawSession(http, http_server.url) as raw:
        no_task = await raw.error("tools/call", name="recall", arguments={"query": "boats"}, task={})
        assert no_task["code"] == METHOD_NOT_FOUND and "generate, refine_region, judge" in no_task["message"]
        bad = await raw.result("tools/call", name="generate", arguments={"prompt": "x", "steps": 0}, task={})
        assert bad["isError"] and "steps" in bad["content"][0]["text"]  # refused before any task was made
        assert (await raw.result("tasks/list"))["tasks"] == []
        unknown = await raw.error("tasks/result", taskId="nope")
        assert unknown["code"] == INVALID_PARAMS and "no task 'nope'" in unknown["message"]
        assert "tools" in await raw.result("tools/list")  # the server keeps answering

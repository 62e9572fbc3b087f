"""The server as hosts see it: tool listing, stdio, streamable HTTP with a token, settings."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from server.app import build_server
from server.settings import SettingsError, load_settings
from tests.conftest import REPO, connect, error_text, server_env, structured

pytestmark = pytest.mark.anyio


def stdio_params(env: dict[str, str]) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "server.cli", "serve"], env=env, cwd=str(REPO)
    )


async def test_every_tool_is_listed_with_a_description_and_input_and_output_schemas(settings):
    async with connect(settings) as client:
        tools = (await client.list_tools()).tools
    names = {t.name for t in tools}
    assert {"generate", "jobs"} <= names
    for tool in tools:
        assert tool.description and len(tool.description) > 80, tool.name
        assert tool.output_schema and tool.output_schema.get("properties"), tool.name
        for prop, schema in tool.input_schema.get("properties", {}).items():
            assert schema.get("description"), f"{tool.name}.{prop} has no description"


async def test_each_output_schema_has_an_id_made_from_its_content_so_validators_compile_it_once(settings):
    """Validators cache a compiled schema by `$id` (the TypeScript SDK's AJV recompiled all nine on every
    tools/list without one); the id must change whenever the schema does, and `$ref`s resolve under it."""
    import hashlib

    import jsonschema

    from server.app import identified

    async with connect(settings) as client:
        tools = {t.name: t.output_schema for t in (await client.list_tools()).tools}
        again = {t.name: t.output_schema for t in (await client.list_tools(cache_mode="bypass")).tools}
    for name, schema in tools.items():
        content = {key: value for key, value in schema.items() if key != "$id"}
        digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
        assert schema["$id"] == f"urn:limner:schema:{name}:output:{digest}" == again[name]["$id"]
    assert len({schema["$id"] for schema in tools.values()}) == len(tools)
    changed = json.loads(json.dumps(tools["jobs"]))
    changed.pop("$id")
    changed["required"] = [*changed.get("required", []), "extra"]
    assert identified("jobs", changed)["$id"] != tools["jobs"]["$id"]

    validator = jsonschema.Draft202012Validator(tools["judge"])  # its judgements are `$ref`s to `$defs`
    judgement = {"index": 0, "width": 8, "height": 8, "verdict": "pass", "overall": 0.5, "items": []}
    assert validator.is_valid({"status": "done", "judgements": [judgement]})
    assert not validator.is_valid({"status": "done", "judgements": [{**judgement, "verdict": "maybe"}]})


async def test_unknown_arguments_and_wrong_types_are_one_line_per_field_errors_for_every_tool(settings):
    """The SDK drops an argument a tool does not take without a word (judge with `orignal` judged without an
    original and passed) and reports a wrong type as pydantic's multi-line dump; here both are tool errors
    naming the field, with what was sent, and nothing runs."""
    cases = [
        ("judge", {"image": "img_0000000000000000", "orignal": "img_0000000000000000"},
         "unknown argument 'orignal' (did you mean 'original'?); judge takes: "),
        ("generate", {"prompt": "a kite", "num_candidates": 3}, "unknown argument 'num_candidates'"),
        ("remember", {"text": "a fact", "kind": "fact", "tag": ["logo"], "colour": "red"},
         "unknown arguments 'tag' (did you mean 'tags'?), 'colour'"),
        ("recall", {"query": "kite", "k": 0}, "k: input should be greater than or equal to 1 (got 0)."),
        ("remember", {"text": "a fact", "kind": "Fact"}, "kind: input should be 'fact', "),
        ("refine_region", {"image": "img_0000000000000000", "prompt": "", "bbox": [1, 2, 3]}, "bbox: "),
        ("generate", {"prompt": "a kite", "width": "wide"}, "width: input should be a valid integer"),
        ("generate", {}, "prompt: required; pass it."),
        ("jobs", {"action": "list", "extra": 1}, "unknown argument 'extra'; jobs takes: "),
    ]  # fmt: skip
    async with connect(settings) as client:
        listed = {t.name: t.input_schema for t in (await client.list_tools()).tools}
        assert all(schema["additionalProperties"] is False for schema in listed.values())
        for tool, arguments, expected in cases:
            text = error_text(await client.call_tool(tool, arguments))
            assert text.startswith(f"Error executing tool {tool}: ") and expected in text, (tool, text)
            assert "\n" not in text and "pydantic" not in text and "validation error" not in text, text
        assert structured(await client.call_tool("recall", {"query": "a fact"}))["memories"] == []
        assert structured(await client.call_tool("jobs", {"action": "list"}))["jobs"] == []


async def test_the_listing_leaves_out_generated_titles_but_keeps_fields_named_title(settings):
    def titles(node, properties=False):
        if isinstance(node, dict):
            own = 0 if properties else int(isinstance(node.get("title"), str))
            return own + sum(titles(v, k == "properties") for k, v in node.items())
        return sum(titles(v) for v in node) if isinstance(node, list) else 0

    async with connect(settings) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert sum(titles(t.input_schema) + titles(t.output_schema) for t in tools.values()) == 0
        result_schema = tools["search"].output_schema["$defs"]["SearchHit"]
        assert result_schema["properties"]["title"]["type"] == "string"
        # the arguments are still checked against the full model: a wrong type is a clear error
        bad = await client.call_tool("recall", {"query": "x", "k": "many"})
        assert bad.is_error and "k" in bad.content[0].text


def test_slim_strips_titles_and_null_defaults_only_never_data_or_property_names():
    from server.app import slim

    schema = {
        "title": "Args",
        "properties": {
            "title": {"title": "Title", "type": "string", "default": {"title": "kept: data"}},
            "default": {"title": "Default", "type": "integer", "enum": [{"title": "kept: data"}]},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        },
        "$defs": {"title": {"title": "Title", "type": "object", "properties": {}}},
        "examples": [{"title": "kept: data", "default": None}],
    }
    assert slim(schema) == {
        "properties": {
            "title": {"type": "string", "default": {"title": "kept: data"}},
            "default": {"type": "integer", "enum": [{"title": "kept: data"}]},
            "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "$defs": {"title": {"type": "object", "properties": {}}},
        "examples": [{"title": "kept: data", "default": None}],
    }


def test_folding_nullable_schemas_accepts_and_refuses_exactly_the_same_values():
    from jsonschema import Draft202012Validator

    from server.app import slim

    schema = {
        "type": "object",
        "properties": {
            "word": {"anyOf": [{"type": "string", "minLength": 2}, {"type": "null"}], "description": "d"},
            "status": {"anyOf": [{"type": "string", "enum": ["a", "b"]}, {"type": "null"}]},
            "sizes": {"anyOf": [{"type": "array", "items": {"type": "integer"}}, {"type": "null"}]},
            "ref": {"anyOf": [{"$ref": "#/$defs/R"}, {"type": "null"}]},  # left alone: a $ref
            "fixed": {"anyOf": [{"const": 3, "type": "integer"}, {"type": "null"}]},  # left alone: const
        },
        "$defs": {"R": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
    }
    folded = slim(schema, fold_nullable=True)
    assert folded["properties"]["word"] == {"type": ["string", "null"], "minLength": 2, "description": "d"}
    assert folded["properties"]["status"] == {"type": ["string", "null"], "enum": ["a", "b", None]}
    assert folded["properties"]["ref"] == schema["properties"]["ref"]
    assert folded["properties"]["fixed"] == schema["properties"]["fixed"]
    values = [None, "", "x", "xy", "a", "c", 5, 3, [], [1, 2], [1, "2"], {"x": 1}, {"y": 1}, {}, True]
    for key in schema["properties"]:
        for value in values:
            before = Draft202012Validator(schema).is_valid({key: value})
            assert Draft202012Validator(folded).is_valid({key: value}) == before, (key, value)


def test_an_argument_whose_default_is_none_is_listed_as_one_to_leave_out():
    from jsonschema import Draft202012Validator

    from server.app import slim

    nullable = [{"type": "string", "minLength": 2}, {"type": "null"}]
    schema = {
        "type": "object",
        "properties": {
            "word": {"anyOf": nullable, "default": None, "description": "d"},
            "ref": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/R"}], "default": None},
            "needed": {"anyOf": nullable},  # required: null is an answer the caller must give
            "auto": {"anyOf": nullable, "default": "ab"},  # null would not mean the default here
            "clash": {
                "anyOf": [{"type": "string", "description": "x"}, {"type": "null"}],
                "default": None,
                "description": "d",
            },
            "nested": {"type": "object", "properties": {"inner": {"anyOf": nullable, "default": None}}},
        },
        "required": ["needed"],
        "$defs": {"R": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
    }
    listed = slim(schema, omit_null=True)["properties"]
    assert listed["word"] == {"type": "string", "minLength": 2, "description": "d"}
    assert listed["ref"] == {"$ref": "#/$defs/R"}
    assert listed["nested"]["properties"]["inner"] == {"type": "string", "minLength": 2}
    assert listed["needed"] == {"anyOf": nullable}
    assert listed["auto"] == {"anyOf": nullable, "default": "ab"}
    assert listed["clash"] == {"anyOf": schema["properties"]["clash"]["anyOf"], "description": "d"}
    assert slim(schema)["properties"]["word"] == {"anyOf": nullable, "description": "d"}  # outputs keep null
    # every value but an explicit null for a left-out argument is judged as before
    full = {**slim(schema, omit_null=True), "properties": listed}
    values = ["", "xy", 5, {"x": 1}, {"y": 1}, {"inner": "xy"}, {"inner": "x"}, [], True]
    for key in ("word", "ref", "nested"):
        for value in values:
            before = Draft202012Validator(schema).is_valid({"needed": "ab", key: value})
            assert Draft202012Validator(full).is_valid({"needed": "ab", key: value}) == before, (key, value)


async def test_the_listing_offers_no_null_to_send_yet_the_tools_still_take_one(settings):
    async with Client(build_server(settings)) as client:
        listing = (await client.list_tools()).tools
        jobs = next(t for t in listing if t.name == "jobs")
        assert jobs.input_schema["properties"]["job_id"]["type"] == "string"
        assert all('"null"' not in json.dumps(t.input_schema) for t in listing)
        result = await client.call_tool("jobs", {"action": "list", "job_id": None})
        assert not result.is_error and "jobs" in result.structured_content


async def test_the_listing_is_sent_from_its_cache_and_made_again_when_the_tools_change(settings):
    server = build_server(settings)
    async with Client(server) as client:
        listed = await client.list_tools()
        assert 0 < listed.ttl_ms <= 10 * 60 * 1000  # a client may reuse the listing for a while
        first = listed.tools
        again = (await client.list_tools(cache_mode="bypass")).tools  # over the wire again
        assert len(server._wire) == 1  # the second answer came from the server's cache
        assert [t.model_dump() for t in again] == [t.model_dump() for t in first]
        again[0].input_schema["properties"].clear()  # a client that changes what it got changes nothing here
        assert (await client.list_tools(cache_mode="bypass")).tools[0].input_schema == first[0].input_schema

        def sketch(prompt: str) -> str:
            """A tool added while the server runs."""
            return prompt

        server.add_tool(sketch)
        assert "sketch" in {t.name for t in (await client.list_tools(cache_mode="bypass")).tools}
        server.remove_tool("sketch")
        assert [t.name for t in (await client.list_tools(cache_mode="bypass")).tools] == [
            t.name for t in first
        ]
    async with Client(server, mode="legacy") as client:  # the 2025-11-25 protocol: its own cached answer
        assert [t.name for t in (await client.list_tools()).tools] == [t.name for t in first]
    assert len(server._wire) == 2


@pytest.mark.slow
async def test_the_server_starts_and_lists_tools_over_stdio_without_loading_any_model(home, tmp_path):
    fresh_models = tmp_path / "fresh-models"
    async with Client(stdio_params(server_env(home, fresh_models))) as client:
        with anyio.fail_after(30):
            tools = (await client.list_tools()).tools
        assert "generate" in {t.name for t in tools}
        assert not fresh_models.exists(), "a model was built or loaded before any call needed it"


@pytest.mark.slow
async def test_generate_over_stdio_returns_candidates_and_progress(home, models_path):
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    async with Client(stdio_params(server_env(home, models_path))) as client:
        result = await client.call_tool(
            "generate", {"prompt": "a kite", "n": 2, "steps": 3}, None, on_progress
        )
    out = structured(result)
    assert len(out["candidates"]) == 2 and all(Path(c["path"]).is_file() for c in out["candidates"])
    assert steps == [1, 2, 3]


@pytest.mark.slow
def test_stdio_mode_writes_nothing_but_protocol_to_stdout(home, models_path):
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"],
        input=b"",
        capture_output=True,
        env=server_env(home, models_path),
        cwd=REPO,
        timeout=60,
    )
    assert proc.stdout == b""
    assert b"limner serving MCP over stdio" in proc.stderr


@pytest.mark.slow
def test_malformed_lines_over_stdio_get_a_json_rpc_error_and_the_server_keeps_answering(home, models_path):
    import json
    import select
    import time

    from mcp.types import LATEST_PROTOCOL_VERSION

    meta = {
        "io.modelcontextprotocol/protocolVersion": LATEST_PROTOCOL_VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    lines = [
        b"not json at all",
        json.dumps([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}]).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": "x"}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 3, "method": 42}).encode(),
        json.dumps({"jsonrpc": "1.0", "id": 4, "method": "tools/list"}).encode(),
        # over 64 KiB (lines that long went to the SDK unchecked), a lone surrogate (valid JSON the SDK's
        # parser drops), an id without a method, a null id
        json.dumps(
            {"jsonrpc": "1.0", "id": 6, "method": "tools/list", "params": {"pad": "x" * 70_000}}
        ).encode(),
        b'{"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "generate", '
        b'"arguments": {"prompt": "a cat \\ud800"}}}',
        json.dumps({"jsonrpc": "2.0", "id": 8}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": None, "method": "tools/list"}).encode(),
        json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"_meta": meta}}).encode(),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=server_env(home, models_path),
        cwd=REPO,
    )
    for line in lines:
        proc.stdin.write(line + b"\n")
    proc.stdin.flush()
    answers, deadline = [], time.monotonic() + 60
    while len(answers) < len(lines):  # a line the server drops would leave readline waiting for ever
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            proc.kill()
            raise AssertionError(
                f"only {len(answers)} of {len(lines)} lines were answered (ids {[a.get('id') for a in answers]})"
            )
        answers.append(json.loads(proc.stdout.readline()))
    out, err = proc.communicate(b"", timeout=60)
    assert out == b"" and proc.returncode == 0
    codes = [(a["id"], a.get("error", {}).get("code")) for a in answers]
    assert codes == [
        (None, -32700), (None, -32600), (2, -32602), (3, -32600), (4, -32600),
        (6, -32600), (7, -32602), (8, -32600), (None, -32600), (5, None),
    ]  # fmt: skip
    assert "params.arguments.prompt holds a lone UTF-16 surrogate" in answers[6]["error"]["message"]
    assert len(answers[-1]["result"]["tools"]) == 13
    assert err.count(b"stdio: refused a message") == 9


@pytest.mark.slow
async def test_stdio_carries_megabyte_messages_both_ways_with_the_wire_off_fds_0_and_1(home, models_path):
    import base64
    import io
    import os

    import numpy as np
    from PIL import Image

    noise = np.random.default_rng(7).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)  # ~3 MB as PNG
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, "PNG")
    data_uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    assert len(data_uri) > 4_000_000
    async with Client(stdio_params(server_env(home, models_path))) as client:
        stored = structured(
            await client.call_tool(
                "remember", {"text": "noise board", "kind": "reference", "image": data_uri}
            )
        )
        resource = await client.read_resource(f"limner://images/{stored['image_id']}")  # ~4 MB back
        png = base64.b64decode(resource.contents[0].blob)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), noise)
        pid = int((home / "memory" / "limner.lock").read_text())
        if Path(f"/proc/{pid}/fd").is_dir():  # while serving: stdin reads nothing, stdout goes to stderr
            assert os.readlink(f"/proc/{pid}/fd/0") == os.devnull
            assert os.readlink(f"/proc/{pid}/fd/1") == os.readlink(f"/proc/{pid}/fd/2")


@pytest.mark.slow
def test_where_a_regular_file_is_on_stdio_the_sdks_transport_serves(home, models_path, tmp_path):
    # a regular file on stdout (as on stdin) cannot be watched by the event loop, so the SDK's threaded
    # transport serves; stdin stays open until both answers are in, since end of input cancels what is
    # still running (with a file on stdin that would race the last request)
    import time

    out_path = tmp_path / "answers.jsonl"
    hello = {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}
    lines = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": hello},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}},
    ]
    with out_path.open("wb") as stdout:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve"],
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=subprocess.PIPE,
            env=server_env(home, models_path),
            cwd=REPO,
        )
        proc.stdin.write("".join(json.dumps(line) + "\n" for line in lines).encode())
        proc.stdin.flush()
        deadline = time.monotonic() + 60
        while out_path.read_bytes().count(b"\n") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        _, err = proc.communicate(b"", timeout=60)
    assert proc.returncode == 0
    assert b"the SDK's threaded transport serves (Windows, or stdin or stdout is a regular file)" in err
    answers = {m["id"]: m for m in map(json.loads, out_path.read_text().splitlines())}
    assert answers[1]["result"]["serverInfo"]["name"] == "limner"
    assert "generate" in {t["name"] for t in answers[2]["result"]["tools"]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for_port(port: int, proc: subprocess.Popen) -> None:
    with anyio.fail_after(60):
        while True:
            assert proc.poll() is None, "server exited before listening"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    return
            except OSError:
                await anyio.sleep(0.1)


@pytest.mark.slow
async def test_http_transport_requires_the_bearer_token_and_checks_the_host_header(home, models_path):
    port = free_port()
    cmd = [sys.executable, "-m", "server.cli", "serve", "--http", "--port", str(port), "--token", "s3cret"]
    proc = subprocess.Popen(
        cmd, env=server_env(home, models_path), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    earlier = home / "gallery" / "20260101-000000-abcdef.html"  # a page an earlier session left
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_text("<html><body>yesterday's session</body></html>")
    try:
        await wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        async with httpx.AsyncClient(
            headers={"Authorization": "Bearer s3cret"}
        ) as http:  # before any MCP call
            page = await http.get(f"http://127.0.0.1:{port}/gallery/20260101-000000-abcdef")
            assert page.status_code == 200 and "yesterday's session" in page.text
        async with httpx.AsyncClient() as http:
            body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
            assert (await http.post(url, json=body)).status_code == 401
            wrong = await http.post(url, json=body, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            for header in ("Basic s3cret", "s3cret", "Bearer s3cre", "Bearer s3cretx"):
                assert (await http.post(url, json=body, headers={"Authorization": header})).status_code == 401
            lower = await http.post(url, json=body, headers={"Authorization": "bearer s3cret"})
            assert lower.status_code != 401  # the scheme is case-insensitive
            rebinding = await http.post(
                url, json=body, headers={"Authorization": "Bearer s3cret", "Host": "evil.example:80"}
            )
            assert rebinding.status_code in (403, 421)
        import httpx2

        authed = httpx2.AsyncClient(
            headers={"Authorization": "Bearer s3cret"}, timeout=httpx2.Timeout(30, read=300)
        )
        async with Client(streamable_http_client(url, http_client=authed)) as client:
            tools = (await client.list_tools()).tools
            assert "generate" in {t.name for t in tools}
            out = structured(await client.call_tool("generate", {"prompt": "a boat", "steps": 2}))
            assert out["status"] == "done"
        async with httpx.AsyncClient(headers={"Authorization": "Bearer s3cret"}) as http:
            gallery = f"http://127.0.0.1:{port}/gallery"
            assert "a boat" in (await http.get(gallery)).text
            # the page shows the session's prompts: a rebinding page must not read it either
            for headers in ({"Host": "evil.example:80"}, {"Origin": "http://evil.example"}):
                assert (await http.get(gallery, headers=headers)).status_code in (403, 421)
    finally:
        proc.terminate()
        stdout, _ = proc.communicate(timeout=30)
    assert stdout == b"", "the HTTP server wrote to stdout; logs belong on stderr"


@pytest.mark.slow
async def test_a_server_bound_to_every_address_answers_to_this_machines_names_and_no_others(
    home, models_path
):
    import psutil

    port = free_port()
    cmd = [sys.executable, "-m", "server.cli", "serve", "--http", "--host", "0.0.0.0", "--port", str(port)]
    env = server_env(home, models_path, LIMNER_TOKEN="s3cret", LIMNER_ALLOWED_HOSTS="limner.example")
    proc = subprocess.Popen(cmd + ["--token", "s3cret"], env=env, cwd=REPO, stderr=subprocess.DEVNULL)
    addresses = [
        a.address
        for found in psutil.net_if_addrs().values()
        for a in found
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Authorization": "Bearer s3cret", "Accept": "application/json, text/event-stream"}
    try:
        await wait_for_port(port, proc)
        async with httpx.AsyncClient() as http:

            async def status(host: str, origin: str | None = None) -> int:
                url = f"http://127.0.0.1:{port}/mcp"
                sent = {**headers, "Host": host, **({"Origin": origin} if origin else {})}
                return (await http.post(url, json=body, headers=sent)).status_code

            local = await status(f"127.0.0.1:{port}")
            assert local not in (401, 403, 421)
            for name in (socket.gethostname(), "limner.example", *addresses):
                assert await status(f"{name}:{port}") == local, name
            # behind a proxy on a default port the Host and Origin carry no port (RFC 9110 7.2)
            assert await status("limner.example") == local
            assert await status("limner.example", "https://limner.example") == local
            assert await status(f"evil.example:{port}") in (403, 421)
            assert await status("evil.example") in (403, 421)
            assert await status("limner.example", "https://evil.example") in (403, 421)
        if addresses:  # a real client over this machine's own network address
            import httpx2

            authed = httpx2.AsyncClient(headers={"Authorization": "Bearer s3cret"}, timeout=30)
            url = f"http://{addresses[0]}:{port}/mcp"
            async with Client(streamable_http_client(url, http_client=authed)) as client:
                assert "generate" in {t.name for t in (await client.list_tools()).tools}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.parametrize("command", [["serve"], ["demo"], ["call", "generate", "--arg", "prompt=a boat"]])
def test_a_home_limner_cannot_write_in_is_one_line_and_exit_2_before_serving(home, models_path, command):
    """The store failing inside the lifespan ended the process with a traceback and no initialize answer."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "images").write_text("a file where the image store goes")
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", *command],
        capture_output=True,
        env=server_env(home, models_path),
        cwd=REPO,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and proc.stdout == b"", proc.stderr[-2000:]
    assert b"Traceback" not in proc.stderr and f"cannot use home {home}".encode() in proc.stderr


@pytest.mark.slow
def test_binding_beyond_loopback_without_a_token_is_refused(home, models_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--http",
            "--host",
            "0.0.0.0",
            "--port",
            str(free_port()),
        ],
        capture_output=True,
        env=server_env(home, models_path),
        cwd=REPO,
        timeout=60,
    )
    assert proc.returncode == 2
    assert b"bearer token" in proc.stderr


@pytest.mark.slow
async def test_offline_false_lets_a_real_profile_fetch_its_models_and_offline_true_never_asks(home, tmp_path):
    """offline = false said "may contact a model hub", yet profile real refused missing weights at once."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    asked: list[str] = []

    class Hub(BaseHTTPRequestHandler):  # stands in for the hub: records what it is asked, has nothing
        def do_GET(self) -> None:
            asked.append(self.path)
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_HEAD = do_GET

        def log_message(self, *args: object) -> None:
            pass

    hub = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=hub.serve_forever, daemon=True).start()
    try:
        for offline in ("true", "false"):
            env = server_env(home, tmp_path / "models")
            env.update(
                LIMNER_PROFILE="real",
                LIMNER_OFFLINE=offline,
                HF_ENDPOINT=f"http://127.0.0.1:{hub.server_port}",
                HF_HOME=str(tmp_path / "hf"),
            )
            env.pop("HF_HUB_OFFLINE", None)
            async with Client(stdio_params(env)) as client:
                message = error_text(await client.call_tool("generate", {"prompt": "a boat", "steps": 1}))
            assert "stabilityai/sdxl-turbo" in message and "hf download" in message
            if offline == "true":
                assert asked == []
        assert any("sdxl-turbo" in path for path in asked), asked
    finally:
        hub.shutdown()


def test_settings_come_from_flags_over_environment_over_the_toml_file(tmp_path):
    home = tmp_path / "h"
    home.mkdir()
    (home / "limner.toml").write_text('max_wait_s = 5\nmax_batch = 3\nprofile = "real"\n')
    settings = load_settings(
        flags={"profile": "tiny"}, environ={"LIMNER_HOME": str(home), "LIMNER_MAX_BATCH": "6"}
    )
    assert (settings.max_wait_s, settings.max_batch, settings.profile) == (5, 6, "tiny")


def test_a_settings_mistake_is_reported_with_its_source(tmp_path):
    (tmp_path / "limner.toml").write_text("max_wiat_s = 5\n")
    with pytest.raises(SettingsError, match="max_wiat_s"):
        load_settings(environ={"LIMNER_HOME": str(tmp_path)})
    with pytest.raises(SettingsError, match="unknown"):
        load_settings(environ={"LIMNER_HOME": str(tmp_path / "x"), "LIMNER_GENERATOR_MODEL": "unknown"})


def test_home_and_the_config_path_are_honoured_or_refused_never_ignored(tmp_path):
    named = tmp_path / "my.toml"
    named.write_text(f'home = "{tmp_path / "data"}"\nmax_wait_s = 5\n')
    env = {"HOME": str(tmp_path / "user")}
    taken = load_settings(environ=env, config=named)
    assert taken.home == tmp_path / "data" and taken.max_wait_s == 5
    assert load_settings(environ={**env, "LIMNER_CONFIG": str(named)}).home == tmp_path / "data"
    over = load_settings(flags={"home": tmp_path / "flag"}, environ=env, config=named)
    assert over.home == tmp_path / "flag"  # the command line wins, as for every setting
    with pytest.raises(SettingsError, match="typo.toml.*LIMNER_CONFIG.*does not exist"):
        load_settings(environ={**env, "LIMNER_CONFIG": str(tmp_path / "typo.toml")})
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "limner.toml").write_text('home = "/elsewhere"\n')
    with pytest.raises(SettingsError, match="home: set in .*LIMNER_HOME"):
        load_settings(environ={"LIMNER_HOME": str(tmp_path / "h")})


def test_folders_given_with_a_leading_tilde_are_the_users_folders(tmp_path, monkeypatch):
    user = tmp_path / "user"
    monkeypatch.setenv("HOME", str(user))  # host configs pass "~/pics" without a shell to expand it
    env = {
        "HOME": str(user),
        "LIMNER_HOME": "~/h",
        "LIMNER_ALLOWED_DIRS": "~/pics",
        "LIMNER_MODELS_PATH": "~/m",
    }
    settings = load_settings(environ=env)
    assert settings.home == user / "h"
    assert settings.allowed_dirs == (user / "pics",) and settings.models_dir == user / "m"
    named = tmp_path / "my.toml"
    named.write_text('allowed_dirs = ["~/pics", "~/more"]\nmodels_path = "~/m2"\n')
    from_file = load_settings(environ={"HOME": str(user)}, config=named)
    assert from_file.allowed_dirs == (user / "pics", user / "more") and from_file.models_dir == user / "m2"


@pytest.mark.slow
def test_the_log_level_takes_any_case_and_a_wrong_one_is_a_one_line_error(tmp_path):
    assert load_settings(flags={"log_level": "debug"}, environ={"HOME": str(tmp_path)}).log_level == "DEBUG"
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--log-level", "verbose"],
        capture_output=True,
        env=server_env(tmp_path),
        cwd=REPO,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr and b"log_level" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[models.mine]\nrole = "generator"\nsorce = "/m"\n', "models.mine"),  # a misspelt key
        ('[models.mine]\nrole = "painter"\nsource = "/m"\n', "models.mine"),  # no such role
        ("models = 3\n", "models"),
        ('[models]\nmine = "sdxl"\n', "models.mine"),
        ('[models.mine]\nrole = "generator"\nsource = "/m"\nsize_factor = 0\n', "models.mine"),
        ('[models.mine]\nrole = "generator"\nsource = "/m"\nfocus_size = 100\n', "models.mine"),
        ('[models.mine]\nrole = "generator"\nsource = "/m"\ndefault_steps = 0\n', "models.mine"),
        ('[roles]\ngenrator = "flux-schnell"\n', "roles.genrator"),  # a misspelt role was ignored
        ('[roles]\ngenerator = "tiny-inpaint"\n', "is a inpainter, not a generator"),
    ],
)
def test_a_bad_model_spec_in_the_toml_file_is_a_settings_error_naming_it(tmp_path, toml, message):
    (tmp_path / "limner.toml").write_text(toml)
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings(environ={"LIMNER_HOME": str(tmp_path)})
    assert "limner.toml" in str(raised.value)
    # and the command line says so in one line on stderr, not with a traceback
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"],
        capture_output=True,
        env=server_env(tmp_path),
        cwd=REPO,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr and message.encode() in proc.stderr


def test_guidance_must_be_a_finite_number():
    from mcp.server.mcpserver.exceptions import ToolError

    from tools.generate.request import check_request
    from tools.models.cache import ModelCache
    from tools.models.specs import PRESETS

    models = ModelCache(PRESETS, {}, "tiny", REPO / "unused")
    for guidance in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ToolError, match="guidance: "):
            check_request(
                prompt="x",
                negative_prompt=None,
                width=64,
                height=64,
                steps=2,
                guidance=guidance,
                seed=1,
                n=1,
                model=None,
                models=models,
                max_pixels=2**20,
                max_steps=50,
                max_batch=8,
                max_prompt_chars=100,
            )


def test_a_queued_job_is_cancelled_at_once_and_a_failed_job_keeps_no_frames(tmp_path):
    import gc
    import threading
    import weakref

    from tools.core.jobs import JobCancelled
    from tools.models.cache import ModelCache
    from tools.models.runner import LocalRunner

    worker, release = LocalRunner(ModelCache({}, {}, "tiny", tmp_path)), threading.Event()
    first = worker.submit("generate", "blocks the worker", lambda *_: release.wait(10), None)
    queued = worker.submit("generate", "waits behind it", lambda *_: "never run", None)
    queued.cancel()
    assert queued.status == "cancelled" and isinstance(queued.future.exception(timeout=0), JobCancelled)

    class Latents:  # stands in for the tensors a pipeline's frames hold
        pass

    held: list[weakref.ref] = []

    def failing(request, models, progress):
        latents = Latents()
        held.append(weakref.ref(latents))
        raise RuntimeError("out of memory")

    failed = worker.submit("generate", "fails", failing, None)
    release.set()
    assert first.future.result(timeout=10) is True
    assert str(failed.future.exception(timeout=10)) == "out of memory" and failed.status == "failed"
    gc.collect()
    assert held[0]() is None  # the frame's locals went with the traceback
    assert queued.status == "cancelled" and queued.started is None  # it never ran


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["serve", "--port", "99999"], 2, b"port: Input should be less than or equal to 65535"),
        (["serve", "--max-wait-s", "-1"], 2, b"max_wait_s: Input should be greater than or equal to 0"),
        (["serve", "--home", "{file}"], 2, b"cannot use home"),
        (["demo", "--home", "{file}"], 2, b"cannot use home"),  # was "failed: MCPError: Connection closed"
        (["demo", "--profile", "real"], 1, b"limner demo: failed: generate answered with an error"),
    ],
)
def test_user_mistakes_on_the_command_line_are_one_line_without_a_traceback(tmp_path, args, code, message):
    home = tmp_path / "home"
    (tmp_path / "a-file").write_text("")
    argv = [a.replace("{file}", str(tmp_path / "a-file")) for a in args]
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", *argv],
        capture_output=True,
        env=server_env(home, tmp_path / "models"),
        cwd=REPO,
        timeout=180,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == code and b"Traceback" not in proc.stderr and message in proc.stderr, proc.stderr
    assert proc.stdout == b""
    assert sum(b"invalid settings" in line for line in proc.stderr.splitlines()) <= 1


# -- hardening (issue 23) ---------------------------------------------------------------------------------
def _stdio_answers(
    lines: list[bytes], env: dict[str, str], timeout: float = 60
) -> tuple[list[dict], bytes, int]:
    """Write `lines` to a stdio server, read one answer per line (failing on a line left unanswered), then
    close stdin; the answers, stderr and exit status."""
    import select
    import time

    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    assert proc.stdin is not None and proc.stdout is not None
    for line in lines:
        proc.stdin.write(line + b"\n")
    proc.stdin.flush()
    answers, deadline = [], time.monotonic() + timeout
    while len(answers) < len(lines):
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        answer = proc.stdout.readline() if ready else b""
        if not answer:  # no answer in time, or the server died
            proc.kill()
            _, err = proc.communicate(timeout=30)
            raise AssertionError(
                f"only {len(answers)} of {len(lines)} lines were answered (ids {[a.get('id') for a in answers]}); "
                f"exit status {proc.returncode}; stderr: {err[-1500:]!r}"
            )
        answers.append(json.loads(answer))
    out, err = proc.communicate(b"", timeout=60)
    assert out == b""
    return answers, err, proc.returncode


@pytest.mark.slow
def test_a_deeply_nested_line_over_stdio_is_answered_with_its_id_and_the_server_keeps_serving(
    home, models_path
):
    """Nesting of ~1,000 levels raised RecursionError out of the line check and ended the server; nesting
    between 200 and ~990 passed the check and the SDK's parser (limit 200) dropped it without a word."""
    from mcp.types import LATEST_PROTOCOL_VERSION

    meta = {
        "io.modelcontextprotocol/protocolVersion": LATEST_PROTOCOL_VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    arguments = '{"name": "recall", "arguments": {"query": ' + "[" * 250 + "]" * 250 + "}}"
    lines = [
        # the Python SDK's key order (id first), nesting the SDK's parser drops
        b'{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": ' + arguments.encode() + b"}",
        # the TypeScript SDK's order (id last), nesting json.loads cannot read (RecursionError)
        b'{"method": "tools/list", "params": {"x": '
        + b"[" * 1000
        + b"]" * 1000
        + b'}, "jsonrpc": "2.0", "id": "two"}',
        b'{"jsonrpc": "2.0", "id": 3, "method": "tools/list", "params": {"x": '
        + b'{"a": ' * 100_000
        + b"1"
        + b"}" * 100_000
        + b"}}",
        # not JSON (a raw control character in a string), yet its id can be read: the client stops waiting
        b'{"jsonrpc": "2.0", "id": 4, "method": "tools/list", "params": {"x": "a\x01b"}}',
        # a number JSON allows but no parser here can hold (over 4,300 digits): the SDK dropped it too
        b'{"jsonrpc": "2.0", "id": 6, "method": "tools/list", "params": {"x": ' + b"9" * 5000 + b"}}",
        json.dumps({"jsonrpc": "2.0", "id": 5, "method": "tools/list", "params": {"_meta": meta}}).encode(),
    ]
    answers, err, status = _stdio_answers(lines, server_env(home, models_path))
    assert status == 0 and b"Traceback" not in err, err[-2000:]
    codes = [(a["id"], a.get("error", {}).get("code")) for a in answers]
    assert codes == [(1, -32700), ("two", -32700), (3, -32700), (4, -32700), (6, -32700), (5, None)]
    for answer in answers[:3]:
        assert "nested deeper than 200 levels" in answer["error"]["message"], answer
    assert "control character" in answers[3]["error"]["message"]
    assert "generate" in {t["name"] for t in answers[-1]["result"]["tools"]}
    assert err.count(b"stdio: refused a message") == 5


@pytest.mark.slow
async def test_the_host_check_ignores_case_and_a_trailing_dot_and_a_deep_body_over_http_is_answered(
    home, models_path
):
    port = free_port()
    cmd = [sys.executable, "-m", "server.cli", "serve", "--http", "--port", str(port), "--token", "s3cret"]
    proc = subprocess.Popen(cmd, env=server_env(home, models_path), cwd=REPO, stderr=subprocess.DEVNULL)
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}}
    headers = {"Authorization": "Bearer s3cret", "Accept": "application/json, text/event-stream"}
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        await wait_for_port(port, proc)
        async with httpx.AsyncClient(timeout=30) as http:

            async def status(host: str, origin: str | None = None, path: str = "/mcp") -> int:
                sent = {**headers, "Host": host, **({"Origin": origin} if origin else {})}
                if path == "/mcp":
                    return (await http.post(url, json=body, headers=sent)).status_code
                return (await http.get(f"http://127.0.0.1:{port}{path}", headers=sent)).status_code

            local = await status(f"127.0.0.1:{port}")
            assert local not in (401, 403, 421)
            # host names are case-insensitive and may end with the root's dot (RFC 9110 4.2.3, RFC 1034)
            for host in (f"LOCALHOST:{port}", f"localhost.:{port}", "LocalHost.", f"LOCALHOST.:{port}"):
                assert await status(host) == local, host
                assert await status(host, path="/gallery") == 200, host
            assert await status(f"localhost:{port}", f"http://LOCALHOST:{port}") == local
            assert await status(f"localhost:{port}", f"http://localhost.:{port}") == local
            for host in (
                f"evil.example:{port}",
                f"EVIL.example.:{port}",
                f"localhost..:{port}",
                "localhost.evil",
            ):
                assert await status(host) == 421, host
            assert await status(f"localhost:{port}", "http://EVIL.example.") == 403
            # a body nested deeper than the SDK's parser reads is answered -32700, and the server goes on
            deep = (
                b'{"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {"x": '
                + b"[" * 5000
                + b"]" * 5000
                + b"}}"
            )
            sent = {**headers, "Content-Type": "application/json"}
            answer = await http.post(url, content=deep, headers=sent)
            assert answer.status_code in (200, 400) and answer.json()["error"]["code"] == -32700
            assert await status(f"127.0.0.1:{port}") == local
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.parametrize(
    ("environ", "flags", "message"),
    [
        ({"LIMNER_HOME": ""}, {}, "LIMNER_HOME is empty"),
        ({"LIMNER_HOME": "   "}, {}, "LIMNER_HOME is empty"),
        ({"LIMNER_HOME": "data"}, {}, "home: 'data' .*LIMNER_HOME.* is relative"),
        ({"LIMNER_HOME": "./"}, {}, "home: '.' .*LIMNER_HOME.* is relative"),
        ({}, {"home": Path("data")}, "home: 'data' .*--home.* is relative"),
        ({}, {"home": Path("")}, "home: '.' .*--home.* is relative"),
        ({"HOME": ""}, {}, "home: '.limner' .*HOME.* is relative"),
    ],
)
def test_an_empty_or_relative_home_is_a_settings_error_naming_where_it_came_from(environ, flags, message):
    """LIMNER_HOME="" became the working directory: images, sessions and the gallery were written there and
    its files became readable image paths (a host starting servers in / opened its whole disk)."""
    with pytest.raises(SettingsError, match=message) as raised:
        load_settings(flags=flags, environ=environ)
    assert "absolute" in str(raised.value)


def test_a_relative_home_in_a_config_file_or_a_relative_folder_setting_is_refused(tmp_path):
    named = tmp_path / "my.toml"
    named.write_text('home = "data"\n')
    with pytest.raises(SettingsError, match="home: 'data' .*my.toml.* is relative"):
        load_settings(environ={"HOME": str(tmp_path)}, config=named)
    home = str(tmp_path / "h")
    for environ, field in (
        ({"LIMNER_HOME": home, "LIMNER_MODELS_PATH": "models"}, "models_path"),
        ({"LIMNER_HOME": home, "LIMNER_MODELS_PATH": ""}, "models_path"),
        ({"LIMNER_HOME": home, "LIMNER_ALLOWED_DIRS": f"{tmp_path}:pics"}, "allowed_dirs"),
    ):
        with pytest.raises(SettingsError, match=f"{field}.*absolute"):
            load_settings(environ=environ)
    absolute = load_settings(environ={"LIMNER_HOME": home, "LIMNER_ALLOWED_DIRS": str(tmp_path)})
    assert absolute.home == Path(home) and absolute.allowed_dirs == (tmp_path,)


@pytest.mark.slow
def test_serving_with_an_empty_limner_home_exits_2_and_writes_nothing_in_the_working_directory(
    tmp_path, models_path
):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"],
        capture_output=True,
        env={**server_env(tmp_path / "unused", models_path), "LIMNER_HOME": ""},
        cwd=cwd,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert b"LIMNER_HOME is empty" in proc.stderr and proc.stdout == b""
    assert list(cwd.iterdir()) == []


@pytest.mark.parametrize("token", ["", " ", "\t", " s3cret", "s3cret\n", "s3c\x00ret", "s\u00e9cret"])
def test_an_empty_blank_or_unsendable_token_is_a_settings_error(tmp_path, token):
    """--token " " started a server nobody could ever authenticate to: the header's value is stripped."""
    for source in ({"flags": {"token": token}}, {"environ": {"LIMNER_TOKEN": token}}):
        environ = {"LIMNER_HOME": str(tmp_path), **source.get("environ", {})}
        with pytest.raises(SettingsError, match="token: "):
            load_settings(flags=source.get("flags"), environ=environ)
    assert load_settings(flags={"token": "s3cret"}, environ={"LIMNER_HOME": str(tmp_path)}).token == "s3cret"


@pytest.mark.slow
@pytest.mark.parametrize("http", [True, False])
def test_a_blank_token_stops_the_server_at_start_up_whatever_the_transport(home, models_path, http):
    command = ["serve", "--token", " "] + (["--http", "--port", str(free_port())] if http else [])
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", *command],
        capture_output=True,
        env=server_env(home, models_path),
        cwd=REPO,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 2 and b"Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert b"token: " in proc.stderr and b"blank" in proc.stderr

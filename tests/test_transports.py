"""The transports as hosts use them: stdio (a subprocess on a pipe) and streamable HTTP with a token and a Host check."""

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

from tests.conftest import REPO, error_text, free_port, server_env, structured

pytestmark = pytest.mark.anyio


def stdio_params(env: dict[str, str]) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=["-m", "server.cli", "serve"], env=env, cwd=str(REPO)
    )


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
    assert len(answers[-1]["result"]["tools"]) == 17
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
    env = {**server_env(home, models_path), "LIMNER_ADMIN_TOKEN": "0perator-s3cret"}
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    earlier = home / "gallery" / "20260101-000000-abcdef.html"  # a page an earlier session left
    earlier.parent.mkdir(parents=True, exist_ok=True)
    earlier.write_text("<html><body>yesterday's session</body></html>")
    try:
        await wait_for_port(port, proc)
        url = f"http://127.0.0.1:{port}/mcp"
        earlier_url = f"http://127.0.0.1:{port}/gallery/20260101-000000-abcdef"
        async with httpx.AsyncClient() as http:  # before any MCP call
            # an earlier run's page shows every session's calls: the operator's, not any token holder's
            page = await http.get(earlier_url, headers={"Authorization": "Bearer s3cret"})
            assert page.status_code == 403 and "admin token" in page.text
            page = await http.get(earlier_url, headers={"Authorization": "Bearer 0perator-s3cret"})
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

"""`limner call TOOL --arg k=v ... | --json '{...}'`: one tool call, its structured result as JSON on stdout.

Against a running server (`--url http://127.0.0.1:8765/mcp`, with the bearer token from --token or
LIMNER_TOKEN) or, without --url, an in-process server built from the same settings as `limner serve`.
This is not stdio serve mode, so stdout carries the result; every message goes to stderr.
A tool that answers status='running' (work beyond max_wait_s) is followed through `jobs` to its result.
Exit status: 0 done, 1 the tool answered with an error or the server could not be reached, 2 bad usage.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from server.settings import Settings

JOB_WAIT_S = 300.0  # one jobs(action='wait') call; a job still running after it is waited on again


class UsageError(ValueError):
    """The command line is wrong; the message says how to fix it."""


def parse_arguments(pairs: list[str] | None, raw_json: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """--json first (an object), then each --arg k=v; a value is read as JSON when it parses, else text.
    Also each --arg's text as typed: a field the tool takes as a string gets it (prompt=1984, seed-like ids)."""
    typed: dict[str, str] = {}
    arguments: dict[str, Any] = {}
    if raw_json is not None:
        try:
            decoded = json.loads(raw_json)
        except json.JSONDecodeError as exc:
            raise UsageError(
                f"--json is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); pass an object "
                """such as '{"prompt": "a red apple", "n": 2}'."""
            ) from None
        except RecursionError:  # nesting deeper than Python's parser goes: no tool takes that
            raise UsageError(
                "--json is nested too deeply to read; pass a flat object of tool arguments such as "
                """'{"prompt": "a red apple", "n": 2}'."""
            ) from None
        if not isinstance(decoded, dict):
            raise UsageError(f"--json must be a JSON object of tool arguments, not {type(decoded).__name__}.")
        arguments.update(decoded)
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(
                f"--arg {pair!r} must look like key=value (e.g. --arg n=2 --arg prompt='a cat')."
            )
        typed[key.strip()] = value
        try:
            arguments[key.strip()] = json.loads(value)
        except (json.JSONDecodeError, RecursionError):  # not JSON (or too deep to be): the text as typed
            arguments[key.strip()] = value
    return arguments, typed


def run_call(
    settings: Settings, tool: str, pairs: list[str] | None, raw_json: str | None, url: str | None
) -> int:
    try:
        arguments, typed = parse_arguments(pairs, raw_json)
    except UsageError as exc:
        print(f"limner call: {exc}", file=sys.stderr)
        return 2
    import anyio

    return anyio.run(_call, settings, tool, arguments, typed, url)


async def _call(
    settings: Settings, tool: str, arguments: dict[str, Any], typed: dict[str, str], url: str | None
) -> int:
    from mcp import Client

    if url is None:  # lazily: a call to a URL needs no server of its own
        from server.app import build_server

        target: Any = build_server(settings)
    else:
        import httpx2
        from mcp.client.streamable_http import streamable_http_client

        headers = {"Authorization": f"Bearer {settings.token}"} if settings.token else {}
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=600))
        target = streamable_http_client(url, http_client=http)
    try:
        async with Client(target) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            tools = set(listed)
            if tool not in tools:
                print(
                    f"limner call: unknown tool {tool!r}; this server has: {', '.join(sorted(tools))}.",
                    file=sys.stderr,
                )
                return 2
            properties = listed[tool].input_schema.get("properties", {})
            for key, text in typed.items():  # --arg prompt=1984 read as JSON is a number: the tool wants text
                if properties.get(key, {}).get("type") == "string" and not isinstance(arguments[key], str):
                    arguments[key] = text
            result = await client.call_tool(tool, arguments)
            result = await follow_job(client, result)
    except JobFailed as exc:
        print(f"limner call: {tool} failed: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # connection refused, 401, protocol errors: say what and where
        where = url or "the in-process server"
        hint = await http_hint(url, settings.token) if url else ""
        print(f"limner call: could not call {tool!r} on {where}: {describe(exc)}{hint}", file=sys.stderr)
        return 1
    texts = [c.text for c in result.content if getattr(c, "type", "") == "text"]
    if result.is_error:
        print(f"limner call: {tool} failed: {' '.join(texts)}", file=sys.stderr)
        return 1
    body = result.structured_content if result.structured_content is not None else {"content": texts}
    try:
        print(json.dumps(body, indent=2, default=str), flush=True)
    except BrokenPipeError:  # `limner call ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 0


class JobFailed(RuntimeError):
    """A followed job ended without a result (failed or cancelled)."""


async def follow_job(client: Any, result: Any) -> Any:
    """A tool that answered status='running' with a job handle: wait on the job and return its result."""
    out = result.structured_content or {}
    if result.is_error or out.get("status") != "running" or not isinstance(out.get("job"), dict):
        return result
    job_id = out["job"]["job_id"]
    print(f"limner: still running as {job_id}; waiting for it", file=sys.stderr)
    while True:
        waited = await client.call_tool("jobs", {"action": "wait", "job_id": job_id, "timeout_s": JOB_WAIT_S})
        body = waited.structured_content or {}
        if waited.is_error:
            return waited
        if body.get("result") is not None:
            waited.structured_content = body["result"]
            return waited
        job = (body.get("jobs") or [{}])[0]
        if job.get("status") not in ("queued", "running"):
            raise JobFailed(f"job {job_id} ended {job.get('status')}: {job.get('error')}")


async def http_hint(url: str, token: str | None) -> str:
    """Why an HTTP server refused us, when its status code says so (the MCP error alone does not)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            status = (await http.post(url, json={}, headers=headers)).status_code
    except httpx.HTTPError as exc:
        return f" (the URL is not reachable: {exc or type(exc).__name__})"
    if status == 401:
        return " (HTTP 401: the server wants a bearer token; pass --token or set LIMNER_TOKEN)"
    if status in (403, 421):
        return f" (HTTP {status}: the server refused this Host/Origin)"
    if status == 404:
        return " (HTTP 404: no MCP endpoint here; the URL usually ends in /mcp)"
    return ""


def describe(exc: BaseException) -> str:
    """The innermost useful message of an exception group or chain."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"

"""The stdio transport without worker threads: the SDK's `stdio_server`, fed by asyncio pipe streams.

The SDK reads stdin and writes stdout through `anyio.wrap_file`, so every line in and every message out
crosses to a worker thread and back: 0.4-0.6 ms of a 2-3 ms round trip on 2 busy cores, on every call.
Here the event loop watches the pipes itself; the SDK still parses, frames and serialises every message.

Like the SDK, while serving fd 0 reads the null device and fd 1 goes to stderr, so a stray print or a child
process never writes into the protocol; both come back on exit. Where asyncio cannot watch the descriptors
(Windows, stdin or stdout a regular file) the SDK's own transport serves instead.

A line the SDK would drop without a word (not JSON, nested deeper than its parser reads, not one JSON-RPC
object, a request with a method or params of the wrong type) is answered here with its JSON-RPC error instead,
with the request's id where it can be read, so the client never waits for it. The check parses with the SDK's
own parser (jiter, through pydantic-core), so what passes it the SDK reads, and it cannot overflow the stack.

End of input means the client has gone, as with the SDK: requests still running are cancelled. Here the end
is seen at once, not one thread hop per line later, so a script that pipes requests in and closes the pipe
straight away gets answers only for what finished before; `limner call` is for that (a file on stdin is
served by the SDK's transport, which also ends at end of input).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import stat
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pydantic_core
from mcp.server.stdio import stdio_server

from server.session_tools import unpaired_surrogate

logger = logging.getLogger("limner")

MAX_LINE = 1 << 30  # one JSON-RPC message per line; images travel inline, so a line may be large


MAX_NESTING = 200  # the SDK's parser (jiter) reads arrays and objects nested this deep, and no deeper
# a JSON escape of a UTF-16 surrogate; a lone one is valid JSON that the SDK's parser drops without a word
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
# the top-level id of a line that cannot be parsed, read from its first or last few kilobytes: the SDKs write
# it first (Python: jsonrpc, id, method, params) or last (TypeScript: method, params, jsonrpc, id)
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_ID_VALUE = rf"(-?\d{{1,300}}|{_STRING})"
_HEAD_ID = re.compile(
    rf"\s*\{{(?:\s*{_STRING}\s*:\s*(?:{_STRING}|-?\d[\d.eE+-]*|true|false|null)\s*,)*?\s*\"id\"\s*:\s*{_ID_VALUE}\s*[,}}]"
)
_TAIL_ID = re.compile(rf"[{{,]\s*\"id\"\s*:\s*{_ID_VALUE}\s*\}}\s*$")
_ID_WINDOW = 1024  # each pattern is linear in it: every token has one way to match


class _Lines:
    """What `stdio_server` reads: an async iterator of text lines.

    The SDK drops a line it cannot read without a word, so a client that sent a malformed request waits for
    ever. Lines that are not JSON (or nested deeper than the SDK's parser reads), not one JSON-RPC object
    (one of method, result or error; an id that is not null), hold a lone UTF-16 surrogate escape, or a
    request whose method or params have the wrong type are answered here with the JSON-RPC error (-32700
    parse error, -32600 invalid request, with the request's id where it has one) and logged; the SDK never
    sees them. No line ends the server: a check that fails for a reason not foreseen answers that line with
    an internal error."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        while True:
            line = await self._reader.readline()
            if not line:
                raise StopAsyncIteration
            text = line.decode("utf-8", errors="replace")
            # every line: jiter reads a 10 MB line (an inline image) in ~1.3 ms, the SDK's parse takes ~4.7 ms
            try:
                refusal = None if text.isspace() else _refusal(text)
            except Exception:  # a bug here must cost this line, never the server and the work in flight
                logger.exception("stdio: the check of a line failed")
                refusal = _error(-32603, "internal error: the server could not check this message", None)
            if refusal is None:
                return text
            logger.warning("stdio: refused a message: %s", refusal["error"]["message"])
            self._writer.write(json.dumps(refusal).encode() + b"\n")  # one write: never inside another line


def _error(code: int, message: str, msg_id: Any = None) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def _refusal(text: str) -> dict[str, Any] | None:
    """The JSON-RPC error answering a malformed line, or None for a line to hand to the SDK."""
    try:
        message = pydantic_core.from_json(text)  # the SDK's parser: what it cannot read is answered here
    except ValueError as exc:
        return _unreadable(text, str(exc))
    if not isinstance(message, dict):
        return _error(
            -32600, "invalid request: send one JSON-RPC object per line (batches are not supported)"
        )
    msg_id = message.get("id")
    if msg_id is not None and (isinstance(msg_id, bool) or not isinstance(msg_id, str | int)):
        return _error(-32600, "invalid request: id must be a string or an integer")
    if "id" in message and msg_id is None:
        return _error(-32600, "invalid request: id must not be null (MCP); leave it out for a notification")
    if message.get("jsonrpc") != "2.0":
        return _error(-32600, 'invalid request: "jsonrpc" must be "2.0"', msg_id)
    kinds = [key for key in ("method", "result", "error") if key in message]
    if len(kinds) != 1 or (kinds != ["method"] and "id" not in message):
        return _error(
            -32600,
            "invalid request: a message has exactly one of method, result (with id) or error (with id)",
            msg_id,
        )
    if "method" in message:
        if not isinstance(message["method"], str):
            return _error(-32600, "invalid request: method must be a string", msg_id)
        if "params" in message and not isinstance(message["params"], dict):
            return _error(-32602, "invalid params: params must be an object", msg_id)
    return None


def _unreadable(text: str, why: str) -> dict[str, Any]:
    """The answer to a line the SDK's parser cannot read: a parse error, with the id where it can be read;
    a lone UTF-16 surrogate (valid JSON, which no tool can encode) as invalid params naming where it is."""
    if "recursion limit" in why:
        return _error(
            -32700,
            f"parse error: the message is nested deeper than {MAX_NESTING} levels, more than the MCP SDK reads; "
            "send flatter arguments",
            _readable_id(text),
        )
    if _SURROGATE_ESCAPE.search(text):
        try:
            message = json.loads(text)
            where = unpaired_surrogate(message) if isinstance(message, dict) else None
        except (ValueError, RecursionError):  # not JSON for json.loads either, or nested past its stack
            where = None
        if where is not None:
            msg_id = message.get("id")
            if not isinstance(msg_id, str | int) or isinstance(msg_id, bool) or unpaired_surrogate(msg_id):
                msg_id = None
            return _error(
                -32602, f"invalid params: {where} holds a lone UTF-16 surrogate; send valid Unicode", msg_id
            )
    return _error(
        -32700,
        f"parse error: the line is not JSON ({why}); send one JSON-RPC message per line",
        _readable_id(text),
    )


def _readable_id(text: str) -> str | int | None:
    """The top-level id of a line that cannot be parsed whole, when its first or last few kilobytes show it
    (where the SDKs write it); else None, as JSON-RPC answers a parse error."""
    found = _HEAD_ID.match(text[:_ID_WINDOW]) or _TAIL_ID.search(text[-_ID_WINDOW:])
    if found is None:
        return None
    try:
        msg_id = json.loads(found.group(1))
    except ValueError:  # an escape json cannot read, a number past its digit limit
        return None
    return None if isinstance(msg_id, str) and unpaired_surrogate(msg_id) else msg_id


class _Writer:
    """What `stdio_server` writes to: `write(text)` then `flush()`, here one pipe write and a drain."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    async def write(self, text: str) -> None:
        self._writer.write(text.encode("utf-8"))

    async def flush(self) -> None:
        await self._writer.drain()


def _watchable(fd: int) -> bool:
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


async def _claim() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Callable[[], None]] | None:
    """Take the wire off fds 0 and 1 onto private descriptors watched by the loop; None where it cannot."""
    if sys.platform == "win32" or not (_watchable(0) and _watchable(1)):
        return None
    import fcntl

    loop = asyncio.get_running_loop()
    saved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (0, 1)]  # to put back on exit
    wire = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3) for fd in (0, 1)]  # owned by the transports

    def restore() -> None:
        for fd, copy in zip((0, 1), saved, strict=True):
            try:
                os.dup2(copy, fd)
            finally:
                os.close(copy)

    try:
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        os.dup2(2, 1)
        reader = asyncio.StreamReader(limit=MAX_LINE)
        await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(wire[0], "rb", 0)
        )
        transport, protocol = await loop.connect_write_pipe(
            asyncio.streams.FlowControlMixin, os.fdopen(wire[1], "wb", 0)
        )
    except BaseException:
        restore()
        raise
    return reader, asyncio.StreamWriter(transport, protocol, None, loop), restore


@asynccontextmanager
async def serve_stdio() -> AsyncIterator[tuple[Any, Any]]:
    """The (read, write) message streams of `stdio_server`, over the thread-free wire where possible."""
    why = "Windows, or stdin or stdout is a regular file"
    try:
        claimed = await _claim()
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. a loop that cannot watch these pipes
        why, claimed = str(exc), None
    if claimed is None:
        logger.info("stdio: the SDK's threaded transport serves (%s)", why)
        async with stdio_server() as streams:
            yield streams
        return
    reader, writer, restore = claimed
    try:
        async with stdio_server(stdin=_Lines(reader, writer), stdout=_Writer(writer)) as streams:  # type: ignore[arg-type]
            yield streams
    finally:
        writer.close()
        restore()

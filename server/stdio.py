"""The stdio transport without worker threads: the SDK's `stdio_server`, fed by asyncio pipe streams.

The SDK reads stdin and writes stdout through `anyio.wrap_file`, so every line in and every message out
crosses to a worker thread and back: 0.4-0.6 ms of a 2-3 ms round trip on 2 busy cores, on every call.
Here the event loop watches the pipes itself; the SDK still parses, frames and serialises every message.

Like the SDK, while serving fd 0 reads the null device and fd 1 goes to stderr, so a stray print or a child
process never writes into the protocol; both come back on exit. Where asyncio cannot watch the descriptors
(Windows, stdin or stdout a regular file) the SDK's own transport serves instead.

End of input means the client has gone, as with the SDK: requests still running are cancelled. Here the end
is seen at once, not one thread hop per line later, so a script that pipes requests in and closes the pipe
straight away gets answers only for what finished before; `limner call` is for that (a file on stdin is
served by the SDK's transport, which also ends at end of input).
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from mcp.server.stdio import stdio_server

logger = logging.getLogger("limner")

MAX_LINE = 1 << 30  # one JSON-RPC message per line; images travel inline, so a line may be large


class _Lines:
    """What `stdio_server` reads: an async iterator of text lines."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    def __aiter__(self) -> _Lines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")


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
    try:
        claimed = await _claim()
    except (OSError, ValueError, RuntimeError) as exc:  # e.g. a loop that cannot watch these pipes
        logger.info("stdio: the SDK's threaded transport serves (%s)", exc)
        claimed = None
    if claimed is None:
        async with stdio_server() as streams:
            yield streams
        return
    reader, writer, restore = claimed
    try:
        async with stdio_server(stdin=_Lines(reader), stdout=_Writer(writer)) as streams:  # type: ignore[arg-type]
            yield streams
    finally:
        writer.close()
        restore()

"""The replica side of the Ray runner: the Serve deployment class every role runs (RoleWorker), what a call
carries to it (CacheArgs, Lease), and how a job's progress, cancel and lease reach the work inside it.

A replica holds its role's models warm in its own ModelCache and runs the same `work` functions as the local
runner, one job at a time in arrival order. Each call is a stream: every progress step, then the output. A tick
(every TICK_S) reads the board (ray_board.py): a job whose limner server's lease ran out is stopped at its next
step, unload orders are acted on, and what the replica holds is reported.

Imported only when `runner = "ray"`, from ray_runner.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from mcp.server.mcpserver.exceptions import ToolError
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from tools.core.jobs import JobCancelled
from tools.models.cache import ModelCache
from tools.models.ray_board import ANSWERS_KEPT, BOARD_NAME, BOARD_NAMESPACE, TICK_S
from tools.models.runner import Work
from tools.models.specs import ModelSpec

logger = logging.getLogger("limner.ray")


@dataclass(frozen=True)
class Lease:
    """Whose job it is: the limner server renewing `server` on the board, and how old its lease may get."""

    server: str
    timeout_s: float


@dataclass(frozen=True)
class CacheArgs:
    """What a replica needs to build the same ModelCache as this server (specs, roles, profile)."""

    models: dict[str, ModelSpec]
    roles: dict[str, str]
    profile: str
    models_dir: Path
    offline: bool


# -- the replica ---------------------------------------------------------------------------------------------
class _StreamProgress:
    """A job's Progress inside a replica: each report goes back on the stream; the flag stops the work."""

    def __init__(self, created: float, cancelled: threading.Event, emit: Callable[[tuple], None]) -> None:
        self.created, self.total = created, 0
        self._cancelled, self._emit = cancelled, emit

    def progress(self, step: int, total: int, message: str) -> None:
        self.total = total
        self._emit(("progress", step, total, message))
        self.check_cancelled()

    def check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise JobCancelled("cancelled by its caller")

    def note(self, message: str) -> None:
        self._emit(("note", message))


@serve.deployment(max_ongoing_requests=64)
class RoleWorker:
    """One role's models, warm, and the work that uses them: one job at a time, in arrival order. A tick
    reads its jobs' leases and the unload orders on the board and reports what it holds."""

    async def __init__(
        self, args: CacheArgs, role: str = ""
    ) -> None:  # async: Serve runs it on the replica's loop
        self.models = ModelCache(args.models, args.roles, args.profile, args.models_dir, args.offline)
        self.role = role
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="limner-replica"
        )
        self._active: dict[int, tuple[Lease, threading.Event]] = {}  # the jobs here, running or waiting
        self._ids = itertools.count()
        self._answers: dict[int, dict[str, Any]] = {}  # unload order number -> what it freed or why not
        self._seen = -1  # the last unload order acted on (-1: none asked yet)
        self._board: Any = None
        try:
            self._replica = serve.get_replica_context().replica_id.unique_id
        except RayServeException:  # outside Serve
            self._replica = uuid.uuid4().hex[:8]
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    async def run(
        self, work: Work, request: Any, created: float, lease: Lease | None = None
    ) -> AsyncIterator[tuple]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple] = asyncio.Queue()
        cancelled = threading.Event()
        key = next(self._ids)
        if lease is not None:
            self._active[key] = (lease, cancelled)

        def emit(event: tuple) -> None:
            loop.call_soon_threadsafe(events.put_nowait, event)

        def run() -> None:
            progress = _StreamProgress(created, cancelled, emit)
            try:
                progress.check_cancelled()  # cancelled while it waited for the replica
                with self.models.serving("remote", "replica job"):  # its models stay loaded while it runs
                    emit(("done", work(request, self.models, progress)))
            except JobCancelled:
                emit(("cancelled",))
            except BaseException as exc:  # the caller's job fails with it
                emit(("error", _portable(exc)))

        running = loop.run_in_executor(self._thread, run)
        try:
            while True:
                event = await events.get()
                yield event
                if event[0] in ("done", "cancelled", "error"):
                    break
        finally:  # the stream was cancelled (or the caller went away): stop the work at its next step
            cancelled.set()
            self._active.pop(key, None)
            del running  # the replica's thread finishes (or stops) the work on its own

    async def _tick_forever(self) -> None:
        """Every TICK_S: stop the jobs whose server's lease ran out, act on unload orders, report."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                if self._board is None:
                    self._board = ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE)
                servers = sorted({lease.server for lease, _ in self._active.values()})
                report = {"loaded": self._loaded(), "answers": dict(self._answers)}
                ages, orders, latest = await self._board.tick.remote(
                    self._replica, self.role, servers, report, self._seen
                )
            except (RayError, ValueError) as exc:  # no board yet (ValueError), or it restarts: next tick
                logger.debug("replica %s: the board did not answer (%s)", self._replica, exc)
                await asyncio.sleep(TICK_S)
                continue
            for lease, cancelled in list(self._active.values()):
                age = ages.get(lease.server, 0.0)
                if age > lease.timeout_s and not cancelled.is_set():
                    logger.warning(
                        "stopping a job of limner server %s: its lease was last renewed %.1f s ago (limit %g s); "
                        "the server is gone",
                        lease.server,
                        age,
                        lease.timeout_s,
                    )
                    cancelled.set()  # the work stops at its next step; a waiting job never starts
            for seq, targets in orders:  # off the loop and off the job thread: unloading waits for a load
                self._answers[seq] = await loop.run_in_executor(None, self._unload, targets)
                for old in sorted(self._answers)[:-ANSWERS_KEPT]:
                    del self._answers[old]
            self._seen = latest
            if not orders:  # after orders, report at once: the caller waits for the answer
                await asyncio.sleep(TICK_S)

    def _loaded(self) -> list[dict[str, Any]]:
        return [
            {
                "name": name,
                "role": record.loaded.spec.role,
                "device": record.loaded.device,
                "memory_gb": round(record.bytes / 2**30, 6),
                "in_use_by": [f"{tool} {job_id}" for tool, job_id in record.users],
            }
            for name, record in self.models.records().items()
        ]

    def _unload(self, targets: list[str]) -> dict[str, Any]:
        freed: list[dict[str, Any]] = []
        try:
            for target in targets:
                freed += [
                    {
                        "name": f.name,
                        "role": f.role,
                        "memory_gb": round(f.bytes / 2**30, 6),
                        "memory_bytes": f.bytes,
                    }
                    for f in self.models.unload(target)
                ]
        except ToolError as exc:  # held by a running job, or a name this replica's settings do not know
            return {"freed": freed, "error": str(exc)}
        return {"freed": freed, "error": None}


def _portable(exc: BaseException) -> BaseException:
    """The exception as the caller will see it: a ToolError as it is, anything else by type and message
    (its traceback and any unpicklable state stay in the replica's log)."""
    if isinstance(exc, ToolError):
        return ToolError(str(exc))
    logger.error("model work failed in the replica", exc_info=exc)
    return RuntimeError(f"{type(exc).__name__}: {exc}")

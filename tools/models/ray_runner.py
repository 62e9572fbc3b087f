"""Model work on a Ray cluster: one Ray Serve deployment per role, shared by every limner server that points at
the cluster (settings `runner = "ray"`, `ray_address`).

The same `work(request, models, progress)` functions as the local runner run inside a replica, which holds its
role's models warm in its own `ModelCache`. A call is a streamed request: the replica yields each progress step
and then the output (plain data: it pickles), and this process finishes it (stores the images in its own store,
encodes previews), so a worker machine needs no access to LIMNER_HOME. Cancelling a job cancels its stream; the
replica sets the job's flag, which the work checks at its next step (cancelling an actor task cannot stop a
thread). Replicas run one job at a time, in order, like the local model thread.

Imported only when `runner = "ray"`: importing Ray costs seconds.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
from mcp.server.mcpserver.exceptions import ToolError
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from tools.core.jobs import Job, JobCancelled
from tools.models.cache import ModelCache
from tools.models.runner import Finish, JobBook, Work, complete, failed, start
from tools.models.specs import ModelSpec

logger = logging.getLogger("limner.ray")

APP_PREFIX = "limner-"  # Serve application per role: limner-generator, limner-inpainter, ...
ROLES = ("generator", "inpainter", "editor", "judge", "detector")  # detector: locate (detector + segmenter)
DEPLOY_TIMEOUT_S = 120.0  # a deployment not running by then cannot be placed (or keeps failing)
WATCH_S = 0.2  # how often a job's stream is checked for a local cancel
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class RayOptions:
    """Where and how the deployments run; from settings."""

    address: str  # anything ray.init takes: "auto", "host:port", "ray://host:10001"
    namespace: str = "limner"
    num_gpus: dict[str, float] = field(
        default_factory=dict
    )  # per role; default: 1 (judge 0.25) where GPUs exist
    num_cpus: float = 0.5  # per replica; Serve's own actors need a little too
    replicas: int = 1


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
    """One role's models, warm, and the work that uses them: one job at a time, in arrival order."""

    def __init__(self, args: CacheArgs) -> None:
        self.models = ModelCache(args.models, args.roles, args.profile, args.models_dir, args.offline)
        self._thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="limner-replica"
        )

    async def run(self, work: Work, request: Any, created: float) -> AsyncIterator[tuple]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple] = asyncio.Queue()
        cancelled = threading.Event()

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
            del running  # the replica's thread finishes (or stops) the work on its own


def _portable(exc: BaseException) -> BaseException:
    """The exception as the caller will see it: a ToolError as it is, anything else by type and message
    (its traceback and any unpicklable state stay in the replica's log)."""
    if isinstance(exc, ToolError):
        return ToolError(str(exc))
    logger.error("model work failed in the replica", exc_info=exc)
    return RuntimeError(f"{type(exc).__name__}: {exc}")


# -- the caller ----------------------------------------------------------------------------------------------
class RayRunner(JobBook):
    """Jobs whose work runs on the cluster's deployments; finishing happens here, off the event loop."""

    def __init__(self, options: RayOptions, cache: CacheArgs, keep_finished: int = 200) -> None:
        super().__init__(keep_finished)
        self.options, self.cache = options, cache
        self._streams = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="limner-ray")
        self._finish_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="limner-finish"
        )
        self._handles: dict[str, Any] = {}
        self._connect = threading.Lock()

    def submit(
        self,
        tool: str,
        description: str,
        work: Work,
        request: Any,
        finish: Finish | None = None,
        role: str = "",
    ) -> Job:
        job = self.new_job(tool, description)
        self._streams.submit(self._follow, job, role, work, request, finish)
        return job

    def _follow(self, job: Job, role: str, work: Work, request: Any, finish: Finish | None) -> None:
        """Send the job to its role's deployment and follow its stream to the end."""
        if not start(job):  # cancelled before it was sent
            return
        try:
            handle = self._handle(role)
            stream = handle.options(stream=True).run.remote(work, request, job.created)
        except BaseException as exc:
            failed(job, exc)
            return
        ended = threading.Event()
        watcher = threading.Thread(target=self._watch, args=(job, stream, ended), daemon=True)
        watcher.start()
        try:
            output = self._read(job, stream, role)
        except BaseException as exc:
            failed(job, exc)
            return
        finally:
            ended.set()
        self._finish_thread.submit(complete, job, finish, output)

    def _read(self, job: Job, stream: Any, role: str) -> Any:
        try:
            for event in stream:
                kind = event[0]
                if kind == "progress":
                    job.progress(*event[1:])  # raises JobCancelled when cancelled here: the watcher stops it
                elif kind == "note":
                    job.note(event[1])
                elif kind == "done":
                    return event[1]
                elif kind == "cancelled":
                    raise JobCancelled(job.id)
                elif kind == "error":
                    raise event[1]
        except (
            RayError,
            RayServeException,
        ) as exc:  # the stream itself failed: cancelled, or its replica lost
            if job.cancel_event.is_set():
                raise JobCancelled(job.id) from None
            raise self._lost(job, role, exc) from None
        raise self._lost(job, role, RuntimeError("the stream ended without a result"))

    def _lost(self, job: Job, role: str, exc: BaseException) -> ToolError:
        """A replica that died or a cluster gone: the job fails; the next call gets a new replica."""
        return ToolError(
            f"{job.tool}: the Ray worker for the {role} role was lost mid-job ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'}); nothing was stored. Call again: Ray "
            f"Serve starts a new replica. If it keeps failing, check the cluster at {self.options.address} "
            "(`ray status`) and the replica's log."
        )

    @staticmethod
    def _watch(job: Job, stream: Any, ended: threading.Event) -> None:
        """Cancel the stream when the job is cancelled here, even between progress steps (a model loading)."""
        while not ended.is_set():
            if job.cancel_event.wait(WATCH_S):
                stream.cancel()
                return

    # -- deployments ---------------------------------------------------------------------------------------
    def _handle(self, role: str) -> Any:
        """The role's deployment handle: connect to the cluster and deploy it the first time (another limner
        server may have deployed it already: then it is used as it is, never redeployed under its jobs)."""
        if role not in ROLES:
            raise ToolError(f"runner: no Ray deployment for role {role!r}; roles: {', '.join(ROLES)}.")
        with self._connect:
            if role in self._handles:
                return self._handles[role]
            self._ensure_connected()
            gpus = self._gpus(role)  # checked even where another server deployed the role: a wrong setting
            app = APP_PREFIX + role
            if _app_status(app) != "RUNNING":
                self._deploy(role, app, gpus)
            self._handles[role] = serve.get_app_handle(app)
            return self._handles[role]

    def _ensure_connected(self) -> None:
        if (
            ray.is_initialized()
        ):  # one Ray driver per process: every limner server in it shares the connection
            return
        self._reachable()
        try:
            ray.init(
                address=self.options.address,
                namespace=self.options.namespace,
                logging_level=logging.WARNING,
                log_to_driver=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ToolError(
                f"runner: cannot reach the Ray cluster at {self.options.address!r} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:200]}). Check that its head is running (`ray status --address "
                f"{self.options.address}`) and reachable from here, or set LIMNER_RUNNER=local."
            ) from None

    def _reachable(self) -> None:
        """A quick TCP check of host:port addresses: ray.init waits minutes on an address nobody answers."""
        address = self.options.address.removeprefix("ray://")
        if address in ("auto", "local"):
            return
        host, _, port = address.rpartition(":")
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except OSError as exc:
            raise ToolError(
                f"runner: cannot reach the Ray cluster at {self.options.address!r} ({exc}). Check that its head "
                f"is running (`ray status --address {address}`) and reachable from here, or set "
                "LIMNER_RUNNER=local."
            ) from None

    def _gpus(self, role: str) -> float:
        """GPUs per replica of the role: the setting, else 1 (judge and detector 0.25) where the cluster has GPUs."""
        gpus_here = float(ray.cluster_resources().get("GPU", 0))
        default = (0.25 if role in ("judge", "detector") else 1.0) if gpus_here else 0.0
        gpus = self.options.num_gpus.get(role, default)
        if gpus > gpus_here:
            raise ToolError(
                f"runner: the {role} deployment asks for {gpus:g} GPU(s) per replica but the cluster at "
                f"{self.options.address} has {gpus_here:g}; add a GPU worker (`ray start --address ...` on a GPU "
                f"machine) or lower ray_num_gpus.{role}."
            )
        return gpus

    def _deploy(self, role: str, app: str, gpus: float) -> None:
        deployment = RoleWorker.options(
            name=f"{role}-worker",
            num_replicas=self.options.replicas,
            ray_actor_options={"num_cpus": self.options.num_cpus, "num_gpus": gpus},
        )
        logger.info(
            "deploying %s on %s (%g GPU, %g CPU)", app, self.options.address, gpus, self.options.num_cpus
        )
        serve._run(deployment.bind(self.cache), name=app, route_prefix=None, _blocking=False)
        deadline = time.monotonic() + DEPLOY_TIMEOUT_S
        while (status := _app_status(app)) != "RUNNING":
            if status in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
                message = _app_message(app)
                raise ToolError(
                    f"runner: the {role} deployment is {status or 'not running'} after "
                    f"{DEPLOY_TIMEOUT_S:g} s on {self.options.address} ({message or 'no message'}); "
                    "check `serve status` and `ray status`: it may need resources the cluster does not have."
                )
            time.sleep(0.2)

    def shutdown(self) -> None:
        """Cancel this server's jobs (their replicas stop at the next step); the cluster and its deployments
        stay for the other limner servers."""
        for job in self.jobs.values():
            job.cancel()
        self._streams.shutdown(wait=False, cancel_futures=True)
        self._finish_thread.shutdown(wait=False, cancel_futures=True)


def _app_status(app: str) -> str | None:
    application = serve.status().applications.get(app)
    return None if application is None else str(getattr(application.status, "value", application.status))


def _app_message(app: str) -> str:
    application = serve.status().applications.get(app)
    return "" if application is None else str(application.message)[:300]

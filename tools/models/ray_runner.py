"""Model work on a Ray cluster: one Ray Serve deployment per role, shared by every limner server that points at
the cluster (settings `runner = "ray"`, `ray_address`).

The same `work(request, models, progress)` functions as the local runner run inside a replica (ray_replica.py),
which holds its role's models warm in its own `ModelCache`. A call is a streamed request: the replica yields each progress step
and then the output (plain data: it pickles), and this process finishes it (stores the images in its own store,
encodes previews), so a worker machine needs no access to LIMNER_HOME. Cancelling a job cancels its stream; the
replica sets the job's flag, which the work checks at its next step (cancelling an actor task cannot stop a
thread). Replicas run one job at a time, like the local model thread; this server sends a role no more jobs
than it may have replicas, and gives those places fairly across its sessions (runner.py `Turns`); fairness
across several servers sharing a cluster is Serve's, first come.

A server killed outright cannot cancel anything: each job carries its server's lease, which the server renews
on the board (ray_board.py) every quarter of `ray_lease_s`, and a replica stops a job whose lease is older than
that. Where deployments go and what the `models` tool shows of them is ray_deploy.py.

Imported only when `runner = "ray"`: importing Ray costs seconds.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import threading
import uuid
from typing import Any

import ray
from mcp.server.mcpserver.exceptions import ToolError
from ray import serve
from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from tools.core.jobs import Job, JobCancelled
from tools.models.cache import ModelCache
from tools.models.inventory import ClusterModels, FreedModel
from tools.models.ray_board import board
from tools.models.ray_deploy import (
    APP_PREFIX,
    AUTOSCALER_DEPLOY_TIMEOUT_S,
    DEPLOY_TIMEOUT_S,
    ROLES,
    RayOptions,
    app_status,
    cluster_models,
    deploy,
    deployment_options,
    unload_remote,
)
from tools.models.ray_replica import CacheArgs, Lease, RoleWorker
from tools.models.runner import Finish, JobBook, Turns, Work, complete, failed, start
from tools.models.specs import ModelSpec

__all__ = ["CacheArgs", "Lease", "RayOptions", "RayRunner", "RoleWorker"]

logger = logging.getLogger("limner.ray")

WATCH_S = 0.2  # how often a job's stream is checked for a local cancel
CONNECT_TIMEOUT_S = 5.0
RENEW_JOIN_S = 2.0  # shutdown waits this long for a lease renewal in flight (a call takes milliseconds)


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
        self._turns: dict[str, Turns] = {}  # per role
        self._turns_lock = threading.Lock()
        self._connect = threading.Lock()
        # this server's lease: every job carries it; renewed on the board until shutdown
        self.lease = Lease(f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}", options.lease_s)
        self._board: Any = None
        self._stopped = threading.Event()
        self._renewing: threading.Thread | None = None
        # which spec a role would use (nothing loads here): for the GPUs its deployment asks for
        self._specs = ModelCache(cache.models, cache.roles, cache.profile, cache.models_dir, cache.offline)

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
        self._turns_for(role).add(job, lambda: self._follow(job, role, work, request, finish))
        return job

    def _turns_for(self, role: str) -> Turns:
        """The role's places: one per replica it may have (each runs one job at a time), given out fairly
        across this server's sessions as the local runner's one place is; Serve would queue first come."""
        with self._turns_lock:  # not _connect: submit must not wait behind a connection being made
            if role not in self._turns:
                slots = self.options.max_replicas or self.options.replicas
                self._turns[role] = Turns(slots, self._streams.submit)
            return self._turns[role]

    def _follow(self, job: Job, role: str, work: Work, request: Any, finish: Finish | None) -> None:
        """Send the job to its role's deployment and follow its stream to the end."""
        if not start(job):  # cancelled before it was sent
            return
        try:
            handle = self._handle(role)
            stream = handle.options(stream=True).run.remote(work, request, job.created, self.lease)
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
            # checked even where another server deployed the role: a wrong setting is said at once
            options = deployment_options(role, self.options, self._spec_for)
            app = APP_PREFIX + role
            if app_status(app) != "RUNNING":
                wait = AUTOSCALER_DEPLOY_TIMEOUT_S if self.options.autoscaler else DEPLOY_TIMEOUT_S
                deploy(role, RoleWorker, (self.cache, role), options, self.options.address, wait)
            self._handles[role] = serve.get_app_handle(app)
            return self._handles[role]

    def _spec_for(self, model_role: str) -> ModelSpec | None:
        """The spec a call would use for the role here (the profile's twin, say); None where there is none."""
        try:
            return self._specs.spec_for(model_role)
        except ToolError:  # no model for the role, or its weights missing: the call itself will say so
            return None

    def _ensure_connected(self) -> None:
        """Connect (one Ray driver per process: every limner server in it shares it), then take the lease."""
        if not ray.is_initialized():
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
        if self._board is None:
            self._board = board()
            ray.get(self._board.renew.remote(self.lease.server), timeout=30)
            self._renewing = threading.Thread(target=self._renew, name="limner-lease", daemon=True)
            self._renewing.start()

    def _renew(self) -> None:
        """Renew this server's lease every quarter of its timeout until shutdown (or the process dies: then the
        replicas stop its jobs once the lease is older than the timeout)."""
        every = self.lease.timeout_s / 4
        while not self._stopped.wait(every) and ray.is_initialized():  # a call after ray.shutdown would
            try:  # start a new local cluster (Ray's auto-init)
                ray.get(self._board.renew.remote(self.lease.server), timeout=every)
            except Exception as exc:  # the board restarting, the cluster unreachable: try again next time
                if self._stopped.is_set():  # shutdown raced the call (Ray may be going down too): done
                    return
                logger.warning(
                    "could not renew the lease on the Ray cluster: %s", str(exc).splitlines()[0][:200]
                )

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

    # -- the models tool -----------------------------------------------------------------------------------
    def cluster_models(self) -> ClusterModels:
        """Each deployment's state, replicas and what they hold; an unreachable cluster is said, not raised
        (the local part of the listing still answers)."""
        with self._connect:
            try:
                self._ensure_connected()
            except ToolError as exc:
                return ClusterModels(
                    address=self.options.address, message="the cluster did not answer", error=str(exc)
                )
        return cluster_models(self.options.address, self._board)

    def unload_remote(self, role_or_model: str) -> tuple[list[FreedModel], str]:
        with self._connect:
            self._ensure_connected()
        return unload_remote(role_or_model, self.cache.models, self._board)

    def shutdown(self) -> None:
        """Cancel this server's jobs (their replicas stop at the next step); the cluster and its deployments
        stay for the other limner servers."""
        for job in self.jobs.values():
            job.cancel()
        self._stopped.set()
        if self._renewing is not None:  # no renewal may reach Ray after this returns (the process may
            self._renewing.join(timeout=RENEW_JOIN_S)  # shut Ray down next, and a late call would fail)
        if self._board is not None and ray.is_initialized():
            self._board.release.remote(self.lease.server)  # not waited on: the server is stopping
        self._streams.shutdown(wait=False, cancel_futures=True)
        self._finish_thread.shutdown(wait=False, cancel_futures=True)

"""Where model work runs.

Every model tool hands the runner three things: a frozen request of plain data, its `work(request, models,
progress) -> output` (the only code that touches a loaded model; the output is plain data too) and its
`finish(output)` (store, measure, build the answer, encode previews). The runner decides where each runs.

`LocalRunner` (this process): one model thread runs the work, so one GPU is never shared by two pipelines at
once, and the event loop stays free (other tools, progress and cancellation keep answering). Its turns are fair
across sessions: each turn goes to the session served least recently, in submission order within one, so a
session with a long queue cannot keep another's call waiting behind all of it.
A second thread finishes what the model thread made, so the GPU starts the next job while the last one is
stored and encoded. Because requests and outputs are plain data (they pickle: a test checks every tool's),
the same work functions can run on another machine's worker.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from mcp.server.mcpserver.exceptions import ToolError

from tools.core.jobs import Job, JobCancelled, Progress, find
from tools.models.cache import ModelCache

logger = logging.getLogger("limner.runner")

Work = Callable[[Any, ModelCache, Progress], Any]
Finish = Callable[[Any], Any]


class Runner(Protocol):
    jobs: dict[str, Job]

    def submit(
        self,
        tool: str,
        description: str,
        work: Work,
        request: Any,
        finish: Finish | None = None,
        role: str = "",
    ) -> Job:
        """Run `work(request, models, progress)` with the models of `role` (generator, inpainter, editor,
        judge: a remote runner's deployment), then `finish(output)` here; the job's result is what finish
        returns."""
        ...

    def get(self, job_id: str, owner: str | None = None) -> Job:
        """The job `job_id` of `owner` (None: anyone's); another session's is "no job", as an unknown id."""
        ...

    def shutdown(self) -> None: ...


class JobBook:
    """The jobs a runner keeps for the `jobs` tool (and tasks): found by id and owner, the oldest finished ones
    let go past `keep_finished`. Ids are 128 random bits, not a count: a sessionless HTTP client reaches its
    job by id alone (server/context.py `owner`), so an id must not be guessable."""

    def __init__(self, keep_finished: int = 200) -> None:
        self.jobs: dict[str, Job] = {}
        self._keep_finished = keep_finished

    def new_job(self, tool: str, description: str) -> Job:
        job = Job(id=f"job_{secrets.token_hex(16)}", tool=tool, description=description)
        self.jobs[job.id] = job
        finished = [j for j in self.jobs.values() if j.finished is not None]
        for old in finished[: max(0, len(finished) - self._keep_finished)]:
            del self.jobs[old.id]
        return job

    def get(self, job_id: str, owner: str | None = None) -> Job:
        return find(self.jobs, job_id, owner)


def start(job: Job) -> bool:
    """queued -> running, once; False when the job was cancelled while it waited."""
    with job._state:
        if job.status != "queued":
            return False
        job.status, job.started = "running", time.time()
        return True


class Turns:
    """Jobs waiting for one of `slots` places to run, given out fairly across sessions: each place goes to the
    waiting job of the session served least recently (a session never served first), the oldest of that
    session's; jobs cancelled while they waited are dropped. `launch(fn)` starts a turn on a worker. The local
    runner has one place (its model thread); the Ray runner one per replica of a role."""

    def __init__(self, slots: int, launch: Callable[[Callable[[], None]], Any]) -> None:
        self.slots = max(1, slots)
        self._launch = launch
        self._waiting: list[tuple[Job, Callable[[], None]]] = []  # submitted, not yet given a turn
        self._running = 0
        self._served: dict[str, int] = {}  # owner -> the turn it was last given
        self._turns = itertools.count()
        self._lock = threading.Lock()

    def add(self, job: Job, run: Callable[[], None]) -> None:
        with self._lock:
            self._waiting.append((job, run))
        self._give()

    def _give(self) -> None:
        picked = []
        with self._lock:
            self._waiting = [(job, run) for job, run in self._waiting if job.status == "queued"]
            while self._running < self.slots and self._waiting:
                index = min(
                    range(len(self._waiting)),
                    key=lambda i: (self._served.get(self._waiting[i][0].owner, -1), i),
                )
                picked.append(self._waiting.pop(index))
                self._running += 1
        for job, run in picked:
            self._launch(lambda job=job, run=run: self._turn(job, run))

    def _turn(self, job: Job, run: Callable[[], None]) -> None:
        try:
            run()
        finally:  # credited after the run: a job started at once may not have had its owner yet
            with self._lock:
                self._served[job.owner] = next(self._turns)
                self._running -= 1
            self._give()


class LocalRunner(JobBook):
    """Model work on one thread of this process, finishing on another; the jobs kept for the `jobs` tool."""

    def __init__(self, models: ModelCache, keep_finished: int = 200) -> None:
        super().__init__(keep_finished)
        self.models = models
        self._model_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="limner-model"
        )
        self._finish_thread = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="limner-finish"
        )
        self._turns = Turns(1, self._model_thread.submit)

    def submit(
        self,
        tool: str,
        description: str,
        work: Work,
        request: Any,
        finish: Finish | None = None,
        role: str = "",
    ) -> Job:
        """Queue `work(request, models, job)`, then `finish(output)`; the job's result is what finish returns
        (the output itself without one). Work should call `job.progress(...)` per step so it can be cancelled."""
        job = self.new_job(tool, description)

        def run() -> None:
            if not start(job):  # cancelled while it waited
                return
            try:
                with self.models.serving(job.tool, job.id):  # the models it gets stay loaded until it ends
                    output = work(request, self.models, job)
            except BaseException as exc:
                failed(job, exc)
                return
            self._finish_thread.submit(complete, job, finish, output)

        self._turns.add(job, run)
        return job

    def shutdown(self) -> None:
        for job in self.jobs.values():
            job.cancel()
        self._model_thread.shutdown(wait=False, cancel_futures=True)
        self._finish_thread.shutdown(wait=False, cancel_futures=True)


class UnavailableRunner(JobBook):
    """Stands where a runner could not be made (runner = "ray" without Ray installed): every model call
    answers `reason` as a tool error; the tools that need no model keep working."""

    def __init__(self, reason: str) -> None:
        super().__init__()
        self.reason = reason

    def submit(
        self,
        tool: str,
        description: str,
        work: Work,
        request: Any,
        finish: Finish | None = None,
        role: str = "",
    ) -> Job:
        raise ToolError(self.reason)

    def shutdown(self) -> None:
        pass


def complete(job: Job, finish: Finish | None, output: Any) -> None:
    """Finish a job's output (store, answer, previews) and deliver the result; off the model thread."""
    try:
        job.result = finish(output) if finish is not None else output
    except BaseException as exc:
        failed(job, exc)
        return
    job.status, job.finished = "done", time.time()
    job.future.set_result(job.result)


def failed(job: Job, exc: BaseException) -> None:
    """End a job with `exc`: cancelled, or failed with its reason (logged unless the caller can fix it)."""
    job.finished = time.time()
    if isinstance(exc, JobCancelled):
        job.fail("cancelled", exc)
        return
    job.error = str(exc)  # reported to whoever waits on the job
    if not isinstance(exc, ToolError):
        logger.exception("job %s (%s) failed", job.id, job.tool, exc_info=exc)
    job.fail("failed", exc)

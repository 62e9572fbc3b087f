"""The runner boundary: model work is plain data in and out, and the model thread never waits on storing.

Every model tool's request and work output must pickle (a remote runner sends them over the wire), and a
round-tripped output must finish into the very result the original does: the same stored image ids."""

from __future__ import annotations

import pickle
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from PIL import Image
from skimage import data

from server.settings import Settings
from tests.conftest import connect, error_text, structured
from tools.core.images import ImageStore, Resolved
from tools.core.jobs import Job
from tools.core.masks import MaskReading, box_mask
from tools.cut_out import request as cut_out_request
from tools.cut_out import result as cut_out_result
from tools.cut_out import work as cut_out_work
from tools.generate import request as generate_request
from tools.generate import result as generate_result
from tools.generate import work as generate_work
from tools.generate.foreground import Placement
from tools.judge import checks as judge_checks
from tools.judge import request as judge_request
from tools.judge import verdict as judge_verdict
from tools.judge import work as judge_work
from tools.models.cache import ModelCache
from tools.models.runner import LocalRunner, Turns
from tools.outpaint import request as outpaint_request
from tools.outpaint import result as outpaint_result
from tools.outpaint import work as outpaint_work
from tools.refine_region import request as refine_request
from tools.refine_region import result as refine_result
from tools.refine_region import work as refine_work
from tools.upscale import request as upscale_request
from tools.upscale import result as upscale_result
from tools.upscale import work as upscale_work


def photo(side: int = 64) -> Image.Image:
    return Image.fromarray(data.astronaut()).resize((side, side))


def models_of(settings: Settings) -> ModelCache:
    return ModelCache(settings.models, settings.roles, settings.profile, settings.models_dir)


def generate_case(settings: Settings, models: ModelCache) -> tuple[Any, Callable, Callable]:
    request = generate_request.check_request(
        prompt="a red chair",
        negative_prompt=None,
        width=64,
        height=64,
        steps=2,
        guidance=None,
        seed=7,
        n=2,
        model=None,
        models=models,
        max_pixels=settings.max_pixels,
        max_steps=settings.max_steps,
        max_batch=settings.max_batch,
        max_prompt_chars=settings.max_prompt_chars,
    )
    return request, generate_work.work, generate_result.finish


def foreground_case(settings: Settings, models: ModelCache) -> tuple[Any, Callable, Callable]:
    base = generate_request.check_request(
        prompt="a mug on a table",
        negative_prompt=None,
        width=64,
        height=64,
        steps=2,
        guidance=None,
        seed=3,
        n=1,
        model=None,
        models=models,
        role="inpainter",
        max_pixels=settings.max_pixels,
        max_steps=settings.max_steps,
        max_batch=settings.max_batch,
        max_prompt_chars=settings.max_prompt_chars,
    )
    cutout = np.zeros((48, 48, 4), np.uint8)
    cutout[12:36, 12:36] = (200, 40, 40, 255)
    source = Resolved(Image.fromarray(cutout), None, "data")
    request = generate_request.check_foreground(
        base,
        source,
        None,
        [Placement(x=0.5, y=0.5, scale=0.5)],
        ["kitchen"],
        False,
        max_batch=settings.max_batch,
        max_prompt_chars=settings.max_prompt_chars,
    )
    return request, generate_work.foreground_work, generate_result.finish_foreground


def refine_case(backend: str) -> Callable[[Settings, ModelCache], tuple[Any, Callable, Callable]]:
    def case(settings: Settings, models: ModelCache) -> tuple[Any, Callable, Callable]:
        checked = refine_request.check_request(
            prompt="a clean patch",
            backend=backend,  # type: ignore[arg-type]
            model=None,
            reference=None,
            margin=16,
            focus=True,
            focus_size=None,
            steps=2,
            strength=1.0,
            guidance=None,
            seed=5,
            blend_dilate=7,
            blend_blur=11,
            paste_back="mask",
            models=models,
            max_steps=settings.max_steps,
            max_pixels=settings.max_pixels,
            max_prompt_chars=settings.max_prompt_chars,
        )
        region = MaskReading(box_mask(96, 96, (30, 30, 60, 60)), "box [30, 30, 60, 60]")
        given = refine_work.RefineWork(checked, Resolved(photo(96), None, "data"), region)
        return given, refine_work.work, refine_result.finish

    return case


def judge_case(settings: Settings, models: ModelCache) -> tuple[Any, Callable, Callable]:
    checked = judge_request.check_request(
        images=[Resolved(photo(), None, "data"), Resolved(photo().rotate(90), None, "data")],
        prompt="an astronaut, a flag",
        questions=None,
        reference=None,
        original=None,
        mask=None,
        foreground_mask=None,
        checks=None,
        min_alignment=20.0,
        max_questions=settings.judge_max_questions,
        max_prompt_chars=settings.max_prompt_chars,
    )
    found = judge_checks.model_free(checked)
    given = judge_work.JudgeWork(checked, lpips=False)

    def finish(given: judge_work.JudgeWork, scores: Any, store: ImageStore) -> tuple[Any, list]:
        return judge_verdict.finish(given.request, found, scores, store, {}), []

    return given, judge_work.work, finish


def cut_out_case(named: bool) -> Callable[[Settings, ModelCache], tuple[Any, Callable, Callable]]:
    def case(settings: Settings, models: ModelCache) -> tuple[Any, Callable, Callable]:
        checked = cut_out_request.check_request(
            object="helmet" if named else None,
            threshold=0.0 if named else None,
            instance=None,
            crop=True,
            feather=2,
            detector=None,
            segmenter=None,
            models=models,
        )
        given = cut_out_request.CutOutWork(checked, Resolved(photo(), None, "data"))
        return given, cut_out_work.work, cut_out_result.finish

    return case


def outpaint_case(settings: Settings, models: ModelCache) -> tuple[Any, Callable, Callable]:
    checked = outpaint_request.check_request(
        prompt="a wider view",
        left=8,
        top=None,
        right=None,
        bottom=8,
        aspect=None,
        n=1,
        seed=3,
        steps=1,
        guidance=None,
        model=None,
        models=models,
        max_steps=settings.max_steps,
        max_prompt_chars=settings.max_prompt_chars,
    )
    growth = outpaint_request.read_growth(48, 48, checked, settings.max_pixels)
    given = outpaint_work.OutpaintWork(checked, Resolved(photo(48), None, "data"), growth)
    return given, outpaint_work.work, outpaint_result.finish


def upscale_case(settings: Settings, models: ModelCache) -> tuple[Any, Callable, Callable]:
    checked = upscale_request.check_request(
        scale=2,
        prompt="an astronaut",
        creativity=0.5,
        backend="tiled",
        seed=2,
        steps=2,
        guidance=None,
        model=None,
        models=models,
        max_steps=settings.max_steps,
        max_prompt_chars=settings.max_prompt_chars,
    )
    given = upscale_work.UpscaleWork(checked, Resolved(photo(32), None, "data"))
    return given, upscale_work.work, upscale_result.finish


CASES = {
    "generate": generate_case,
    "generate-foreground": foreground_case,
    "refine_region-inpainter": refine_case("inpainter"),
    "refine_region-classical": refine_case("classical"),
    "judge": judge_case,
    "cut_out-named": cut_out_case(named=True),
    "cut_out-salient": cut_out_case(named=False),
    "outpaint": outpaint_case,
    "upscale-tiled": upscale_case,
}


def stored_ids(result: Any) -> list[str]:
    """Every store id a result names, in order (candidates, refined image, masks, judged images)."""
    dumped = result.model_dump()
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("id", "mask_id", "region_mask_id", "input_id") and isinstance(item, str):
                    found.append(item)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(dumped)
    return found


@pytest.mark.parametrize("tool", list(CASES))
def test_a_model_tools_request_and_output_pickle_and_finish_into_the_same_result(settings, tmp_path, tool):
    models = models_of(settings)
    request, work, finish = CASES[tool](settings, models)
    sent = pickle.loads(pickle.dumps(request))
    job = Job(id="job_1", tool=tool, description="pickle round trip")
    output = work(sent, models, job)
    returned = pickle.loads(pickle.dumps(output))

    here, there = ImageStore(tmp_path / "here"), ImageStore(tmp_path / "there")
    local, _ = finish(request, output, here)
    remote, _ = finish(sent, returned, there)
    if tool == "judge":  # judge stores no image of its own: every score must survive the trip
        assert len(local.judgements) == 2 and all(j.items for j in local.judgements)
        assert local.model_dump(exclude={"timings"}) == remote.model_dump(exclude={"timings"})
        return
    ids = stored_ids(local)
    assert ids, f"{tool}: the result names no stored image"
    assert stored_ids(remote) == ids


def test_the_model_thread_starts_the_next_job_while_the_last_is_still_being_stored(settings):
    runner = LocalRunner(models_of(settings))
    storing, release, second_ran = threading.Event(), threading.Event(), threading.Event()

    def slow_finish(output: str) -> str:
        storing.set()
        assert release.wait(10), "never released"
        return output

    first = runner.submit("generate", "stored slowly", lambda *_: "first", None, slow_finish)
    second = runner.submit("generate", "next", lambda *_: second_ran.set() or "second", None)
    try:
        assert storing.wait(10)
        assert second_ran.wait(10), "the model thread waited for the first job's storing"
        assert first.status == "running"
    finally:
        release.set()
    assert first.future.result(timeout=10) == "first" and second.future.result(timeout=10) == "second"
    assert first.status == "done" and second.status == "done"
    runner.shutdown()


def test_a_finish_that_fails_fails_its_job_with_the_reason(settings):
    runner = LocalRunner(models_of(settings))

    def broken(output: str) -> str:
        raise OSError("disk full")

    job = runner.submit("generate", "cannot store", lambda *_: "made", None, broken)
    with pytest.raises(OSError, match="disk full"):
        job.future.result(timeout=10)
    assert job.status == "failed" and job.error == "disk full" and job.finished is not None
    runner.shutdown()


@pytest.mark.anyio
async def test_runner_ray_without_ray_installed_says_how_to_install_it_and_other_tools_keep_working(
    make_settings, monkeypatch
):
    monkeypatch.setitem(sys.modules, "tools.models.ray_runner", None)  # as if Ray were not installed
    async with connect(make_settings(runner="ray", ray_address="127.0.0.1:6379")) as client:
        text = error_text(await client.call_tool("generate", {"prompt": "x", "steps": 1}))
        kept = structured(await client.call_tool("remember", {"text": "still up", "kind": "fact"}))
    assert 'pip install "limner[ray]"' in text and "LIMNER_RUNNER=local" in text
    assert kept["id"].startswith("mem_")


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


def test_turns_with_two_places_run_two_jobs_at_once_and_give_each_freed_place_to_the_least_served_session():
    """The Ray runner's places: one per replica of a role (here two), handed out as the local runner's one.
    One job ends at a time, and the next starts before another may end: two places freed together start two
    jobs whose threads may begin in either order."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
    turns, gate, order, running, most = Turns(2, pool.submit), threading.Semaphore(0), [], [0], [0]
    changed = threading.Condition()
    jobs = [Job(f"job_{k}", "generate", "") for k in range(6)]
    owners = ["a", "a", "a", "a", "b", "c"]

    def run(job: Job) -> Callable[[], None]:
        def turn() -> None:
            with changed:
                running[0] += 1
                most[0] = max(most[0], running[0])
                order.append(job.id)
                changed.notify_all()
            assert gate.acquire(timeout=30)  # each job holds its place until the test lets one go
            with changed:
                running[0] -= 1
                changed.notify_all()

        return turn

    def until(ready: Callable[[], bool]) -> None:
        with changed:
            assert changed.wait_for(ready, timeout=30), order

    for job, who in zip(jobs, owners, strict=True):
        job.owner = who
        turns.add(job, run(job))
    jobs[3].cancel()  # cancelled while it waits: dropped, never run
    try:
        until(lambda: len(order) == 2)
        for started in (3, 4, 5):  # let one job end; the freed place starts the next
            gate.release()
            until(lambda started=started: len(order) == started)
        gate.release(2)
        until(lambda: running[0] == 0)
    finally:
        pool.shutdown(wait=False)
    assert most[0] == 2  # never more jobs at once than places
    # a's first two take both places; as each ends, the sessions never served (b, then c) go first, then a's
    # next; a's fourth was cancelled while it waited
    assert order == ["job_0", "job_1", "job_4", "job_5", "job_2"]

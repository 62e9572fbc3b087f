"""The `models` tool and `limner models`: what serves each role and what is loaded, unloading, the idle
unload and the memory budget, all through the MCP client on the tiny twins."""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import time
import weakref
from typing import Any

import anyio
import pytest
from mcp.server.mcpserver.exceptions import ToolError

from server.settings import SettingsError, load_settings
from tests.conftest import REPO, connect, error_text, server_env, structured
from tools.models.cache import ModelCache
from tools.models.weights import GIB, weights_bytes

pytestmark = pytest.mark.anyio
SMALL = {"width": 64, "height": 64, "steps": 2, "seed": 1}


async def listed(client: Any) -> dict[str, Any]:
    return structured(await client.call_tool("models", {"action": "list"}))


def role(listing: dict[str, Any], name: str) -> dict[str, Any]:
    return next(r for r in listing["roles"] if r["role"] == name)


async def generate(client: Any) -> dict[str, Any]:
    return structured(await client.call_tool("generate", {"prompt": "a red kite", **SMALL}))


async def refine(client: Any, image_id: str) -> dict[str, Any]:
    args = {"image": image_id, "prompt": "a blue sky", "bbox": [8, 8, 40, 40], "steps": 2, "seed": 1}
    return structured(await client.call_tool("refine_region", args))


def measured_sizes(settings: Any) -> tuple[int, int]:
    """The generator's and the inpainter's twins as the cache measures them once loaded (what the models
    tool lists; the first test checks that figure against the weights on disk)."""
    cache = ModelCache(settings.models, settings.roles, "tiny", settings.models_dir)
    cache.get("generator")
    cache.get("inpainter")
    return cache.records()["tiny"].bytes, cache.records()["tiny-inpaint"].bytes


async def test_models_lists_every_role_and_model_and_the_generator_loaded_with_its_memory_after_a_generate(
    settings,
):
    async with connect(settings) as client:
        before = await listed(client)
        await generate(client)
        after = await listed(client)
    assert {r["role"] for r in before["roles"]} == set(settings.roles)
    assert {m["name"] for m in before["models"]} == set(settings.models)  # presets and twins
    generator = role(before, "generator")
    assert generator["model"] == "tiny" and generator["tiny"] and not generator["loaded"]
    assert generator["memory_bytes"] is None and before["used_bytes"] == 0
    editor = role(before, "editor")  # no twin: without its weights it is listed with why it cannot load
    assert editor["model"] == "qwen-image-edit" and (editor["problem"] is None) == editor["weights_present"]
    assert editor["weights_present"] or "hf download" in editor["problem"]
    sdxl = next(m for m in before["models"] if m["name"] == "sdxl-turbo")
    assert sdxl["role"] == "generator" and not sdxl["tiny"] and sdxl["vram_gb"] == 8 and sdxl["pipeline"]

    loaded = role(after, "generator")
    assert loaded["loaded"] and loaded["device"] == "cpu" and loaded["dtype"] == "float32"
    assert loaded["in_use_by"] == [] and loaded["last_used"] and loaded["idle_s"] >= 0
    # measured from the loaded twin's tensors: its float32 weights files hold the same numbers
    on_disk = weights_bytes(settings.models_dir / "tiny-text2image")
    assert on_disk and abs(loaded["memory_bytes"] - on_disk) / on_disk < 0.02
    assert after["used_bytes"] == loaded["memory_bytes"] and loaded["memory_gb"] > 0
    assert next(m for m in after["models"] if m["name"] == "tiny")["loaded"]
    assert not role(after, "inpainter")["loaded"]


async def test_unloading_the_generator_frees_its_memory_and_the_next_generate_loads_it_again(settings):
    async with connect(settings) as client:
        await generate(client)
        size = role(await listed(client), "generator")["memory_bytes"]
        out = structured(await client.call_tool("models", {"action": "unload", "role_or_model": "generator"}))
        assert [(f["name"], f["memory_bytes"]) for f in out["unloaded"]] == [("tiny", size)]
        assert out["freed_gb"] == pytest.approx(size / GIB, abs=1e-6)
        assert not role(out, "generator")["loaded"] and out["used_bytes"] == 0
        # again: nothing is loaded, which is an answer (the call is idempotent), not an error
        again = structured(await client.call_tool("models", {"action": "unload", "role_or_model": "tiny"}))
        assert again["unloaded"] == [] and "nothing was loaded for 'tiny'" in again["message"]

        remade = await generate(client)
        assert remade["status"] == "done" and remade["timings"]["load"] > 0
        assert role(await listed(client), "generator")["memory_bytes"] == size


async def test_a_memory_budget_unloads_the_least_recently_used_model_to_make_room(make_settings):
    generator, inpainter = measured_sizes(make_settings())
    budget_gb = (max(generator, inpainter) + min(generator, inpainter) // 2) / GIB  # one fits, two do not
    async with connect(make_settings(model_memory_gb=budget_gb)) as client:
        image_id = (await generate(client))["candidates"][0]["id"]
        assert (await refine(client, image_id))["status"] == "done"
        listing = await listed(client)
        assert not role(listing, "generator")["loaded"] and role(listing, "inpainter")["loaded"]
        assert listing["budget_source"] == "model_memory_gb"
        assert listing["budget_gb"] == pytest.approx(budget_gb, abs=1e-6)
        assert listing["used_bytes"] == inpainter

        await generate(client)  # and back: the inpainter is now the least recently used
        listing = await listed(client)
        assert role(listing, "generator")["loaded"] and not role(listing, "inpainter")["loaded"]


async def test_a_budget_smaller_than_one_model_is_refused_naming_its_size_the_budget_and_the_setting(
    make_settings,
):
    generator, _ = measured_sizes(make_settings())
    async with connect(make_settings(model_memory_gb=generator / 2 / GIB)) as client:
        text = error_text(await client.call_tool("generate", {"prompt": "a red kite", **SMALL}))
        size, budget = f"{generator / 2**20:.1f} MB", f"{generator / 2 / 2**20:.1f} MB"  # 6.4 MB, 3.2 MB
        assert f"model 'tiny' (generator) needs about {size}" in text
        assert f"more than the model memory budget of {budget} (model_memory_gb)" in text
        assert "Raise model_memory_gb" in text and "at least" in text
        needed = float(text.split("at least ")[1].split(",")[0])
        assert needed * GIB >= generator  # the figure it asks for is enough
        assert (await listed(client))["used_bytes"] == 0


async def test_a_model_unused_for_idle_unload_s_is_unloaded_by_the_server_on_its_own(make_settings):
    async with connect(make_settings(idle_unload_s=2)) as client:
        await generate(client)
        answered = time.monotonic()
        listing = await listed(client)
        assert role(listing, "generator")["loaded"] and listing["idle_unload_s"] == 2
        with anyio.fail_after(30):
            while role(await listed(client), "generator")["loaded"]:
                await anyio.sleep(0.1)  # polling the listing: the server's background check unloads it
        # the job ended a moment before its answer, so the model went no earlier than ~2 s after that
        assert time.monotonic() - answered > 1.5


async def test_a_model_a_running_job_holds_is_neither_unloaded_on_request_nor_when_idle_until_the_job_ends(
    make_settings,
):
    steps: list[float] = []  # when each denoising step was reported
    stepped = [anyio.Event()]
    ended: list[Any] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(time.monotonic())
        stepped[0].set()
        stepped[0] = anyio.Event()

    async def steps_until(seconds_after_first: float) -> None:
        while not steps or time.monotonic() - steps[0] < seconds_after_first:
            await stepped[0].wait()

    async with connect(make_settings(idle_unload_s=1)) as client:
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                args = {"prompt": "a city", "steps": 150, "n": 8, "width": 64, "height": 64}
                ended.append(await client.call_tool("generate", args, None, on_progress))

            tg.start_soon(long_call)
            with anyio.fail_after(60):
                await steps_until(0)
            (job,) = structured(await client.call_tool("jobs", {"action": "list"}))["jobs"]
            job_id = job["job_id"]
            for name in ("generator", "tiny"):
                text = error_text(
                    await client.call_tool("models", {"action": "unload", "role_or_model": name})
                )
                assert f"model 'tiny' is running generate job '{job_id}'" in text
                assert f"jobs(action='wait', job_id='{job_id}')" in text and "jobs(action='cancel'" in text
            # longer than idle_unload_s since the job got the model: held, so the idle check leaves it
            with anyio.fail_after(60):
                await steps_until(1.6)
            generator = role(await listed(client), "generator")
            assert generator["loaded"] and generator["in_use_by"] == [f"generate {job_id}"]
            await client.call_tool("jobs", {"action": "cancel", "job_id": job_id})
        assert ended[0].is_error and "cancelled" in error_text(ended[0])
        # the job is over: unloading is no longer refused (the idle check may have been first)
        out = structured(await client.call_tool("models", {"action": "unload", "role_or_model": "generator"}))
        assert not role(out, "generator")["loaded"] and out["used_bytes"] == 0


def test_a_loaded_model_is_left_out_of_garbage_collections_yet_freed_when_unloaded_even_in_a_cycle(settings):
    cache = ModelCache(settings.models, settings.roles, "tiny", settings.models_dir)
    pipe = cache.get("generator").model
    tracked = {id(o) for o in gc.get_objects()}  # the collector's generations; frozen objects are not in them
    assert gc.get_freeze_count() > 0 and id(pipe) not in tracked and id(pipe.unet) not in tracked
    pipe.cycle = pipe  # only a collection can free it now, frozen or not
    gone = weakref.ref(pipe)
    del pipe
    assert cache.unload("generator") and gone() is None


def test_a_model_a_job_holds_is_never_unloaded_to_make_room_so_the_new_model_is_refused(settings):
    generator, inpainter = measured_sizes(settings)
    budget_gb = (max(generator, inpainter) + min(generator, inpainter) // 2) / GIB
    cache = ModelCache(settings.models, settings.roles, "tiny", settings.models_dir, memory_gb=budget_gb)
    with cache.serving("judge", "job_9"):
        cache.get("generator")
        with pytest.raises(ToolError, match=r"beside the models the running job holds \(tiny \("):
            cache.get("inpainter")
    assert list(cache.records()) == ["tiny"]
    cache.get("inpainter")  # the job is over: the generator is the least recently used, and goes
    assert list(cache.records()) == ["tiny-inpaint"]


async def test_unload_explains_an_unknown_name_a_missing_one_and_a_name_given_to_list(settings):
    async with connect(settings) as client:
        unknown = error_text(await client.call_tool("models", {"action": "unload", "role_or_model": "sdxl"}))
        missing = error_text(await client.call_tool("models", {"action": "unload"}))
        to_list = error_text(await client.call_tool("models", {"action": "list", "role_or_model": "tiny"}))
    assert "no role or model 'sdxl'" in unknown
    assert all(name in unknown for name in ("generator", "inpainter", "sdxl-turbo", "tiny-inpaint"))
    assert "role_or_model: required for action='unload'" in missing and "loaded now: none" in missing
    assert "only for action='unload'" in to_list


def test_idle_unload_and_the_memory_budget_are_read_from_the_environment_and_checked(tmp_path):
    environ = {"HOME": str(tmp_path), "LIMNER_IDLE_UNLOAD_S": "300", "LIMNER_MODEL_MEMORY_GB": "12.5"}
    settings = load_settings(environ=environ)
    assert settings.idle_unload_s == 300 and settings.model_memory_gb == 12.5
    off = load_settings(environ={**environ, "LIMNER_IDLE_UNLOAD_S": "off", "LIMNER_MODEL_MEMORY_GB": ""})
    assert off.idle_unload_s is None and off.model_memory_gb is None
    with pytest.raises(SettingsError, match="idle_unload_s: Input should be greater than or equal to 1"):
        load_settings(environ={**environ, "LIMNER_IDLE_UNLOAD_S": "0.5"})
    with pytest.raises(SettingsError, match="model_memory_gb: Input should be greater than 0"):
        load_settings(flags={"model_memory_gb": "0"}, environ=environ)


@pytest.mark.slow
def test_limner_models_prints_the_listing_as_json_with_the_flags_applied(tmp_path, models_path):
    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-m", "server.cli", "models", "--idle-unload-s", "30", "--model-memory-gb", "2"],
        capture_output=True,
        text=True,
        env=server_env(home, models_path),
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    generator = next(r for r in listing["roles"] if r["role"] == "generator")
    assert generator["model"] == "tiny" and not generator["loaded"]  # a new process has nothing loaded
    assert {"sdxl-turbo", "flux-schnell", "tiny", "tiny-inpaint"} <= {m["name"] for m in listing["models"]}
    assert listing["idle_unload_s"] == 30 and listing["budget_gb"] == 2
    assert listing["budget_source"] == "model_memory_gb" and listing["used_bytes"] == 0

"""generate and jobs, through the MCP client, on the tiny offline model."""

from __future__ import annotations

import base64
import io
import re
import shutil
from pathlib import Path

import anyio
import pytest
from mcp import Client
from mcp.server.mcpserver import Context
from mcp_types import CallToolResult
from PIL import Image

from server.app import build_server
from tests.conftest import REPO, connect, error_text, structured

pytestmark = pytest.mark.anyio


def stored_files(home: Path) -> list[str]:
    images = home / "images"
    return sorted(p.name for p in images.iterdir()) if images.exists() else []


async def test_three_candidates_are_distinct_with_their_own_seeds_and_valid_previews(settings):
    async with connect(settings) as client:
        result = await client.call_tool("generate", {"prompt": "a red apple on a table", "n": 3, "seed": 11})
        out = structured(result)
        candidates = out["candidates"]
        assert [c["seed"] for c in candidates] == [11, 12, 13]
        assert len({c["id"] for c in candidates}) == 3
        assert out["tiny"] is True and "tiny-random" in out["model"]
        previews = [c for c in result.content if c.type == "image"]
        assert len(previews) == 3 and out["timings"]["previews"] > 0  # their encoding is reported too
        for content in previews:
            raw = base64.b64decode(content.data)
            assert len(raw) < 1024 * 1024
            with Image.open(io.BytesIO(raw)) as img:
                assert max(img.size) <= 512
                assert content.mime_type == f"image/{img.format.lower()}"
        pixels = [Image.open(c["path"]).tobytes() for c in candidates]
        assert len(set(pixels)) == 3


async def test_same_seed_and_parameters_give_bit_identical_pixels(settings):
    async with connect(settings) as client:
        args = {"prompt": "a lighthouse at dusk", "n": 2, "seed": 7, "width": 64, "height": 96, "steps": 3}
        first = structured(await client.call_tool("generate", args))
        second = structured(await client.call_tool("generate", args))
    a = [Image.open(c["path"]).tobytes() for c in first["candidates"]]
    b = [Image.open(c["path"]).tobytes() for c in second["candidates"]]
    assert a == b
    assert [c["id"] for c in first["candidates"]] == [c["id"] for c in second["candidates"]]
    assert first["candidates"][0]["width"] == 64 and first["candidates"][0]["height"] == 96


async def test_a_prompt_longer_than_the_text_encoder_reads_is_reported_with_where_it_was_cut(settings):
    """CLIP reads 77 tokens; what follows changes nothing (the same seed gives the same image), so say so."""
    head = "a red kite over a green hill at dawn, "
    args = {"width": 64, "height": 64, "steps": 1, "seed": 7}
    async with connect(settings) as client:
        short = structured(await client.call_tool("generate", {"prompt": head.strip(" ,"), **args}))
        long = structured(
            await client.call_tool("generate", {"prompt": head * 4 + "and a yellow moon", **args})
        )
        longer = structured(
            await client.call_tool("generate", {"prompt": head * 4 + "and a blue sun", **args})
        )
    assert short["warnings"] == []
    assert long["candidates"][0]["id"] == longer["candidates"][0]["id"]  # the endings were never read
    (warning,) = long["warnings"]
    assert warning.startswith("prompt: ") and "over the 77 its text encoder reads" in warning
    assert "put what matters first" in warning


async def test_a_negative_prompt_the_model_will_not_read_at_this_guidance_is_reported(settings):
    """At guidance <= 1 classifier-free guidance is off, so the negative prompt changes nothing: say so."""
    args = {"prompt": "a red kite", "width": 64, "height": 64, "steps": 1, "seed": 3}
    async with connect(settings) as client:
        plain = structured(await client.call_tool("generate", {**args, "guidance": 0}))
        unread = structured(
            await client.call_tool("generate", {**args, "guidance": 0, "negative_prompt": "blurry, text"})
        )
        read = structured(
            await client.call_tool("generate", {**args, "guidance": 3, "negative_prompt": "blurry, text"})
        )
    assert plain["warnings"] == []
    assert unread["candidates"][0]["id"] == plain["candidates"][0]["id"]  # it was indeed not read
    (warning,) = unread["warnings"]
    assert warning.startswith("negative_prompt: not used: at guidance 0") and "guidance above 1" in warning
    assert read["warnings"] == []


async def test_reading_the_image_resource_returns_the_stored_png(settings):
    async with connect(settings) as client:
        out = structured(await client.call_tool("generate", {"prompt": "a blue cube", "seed": 1}))
        candidate = out["candidates"][0]
        resource = await client.read_resource(candidate["uri"])
    content = resource.contents[0]
    assert content.mime_type == "image/png"
    assert base64.b64decode(content.blob) == Path(candidate["path"]).read_bytes()


async def test_one_progress_notification_arrives_per_denoising_step(settings):
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect(settings) as client:
        await client.call_tool(
            "generate", {"prompt": "a tree", "steps": 5, "seed": 3}, progress_callback=on_progress
        )
    assert [p for p, _, _ in seen] == [1, 2, 3, 4, 5]
    assert all(total == 5 and message for _, total, message in seen)


async def test_a_cancelled_generation_stops_early_and_the_next_call_works(settings):
    first_step = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first_step.set()

    async with connect(settings) as client:
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                await client.call_tool(
                    "generate",
                    {"prompt": "a city", "steps": 60, "width": 128, "height": 128},
                    None,
                    on_progress,
                )

            tg.start_soon(long_call)
            with anyio.fail_after(60):
                await first_step.wait()
            # another call looking at the running job must not take it from the request that owns it
            (running,) = structured(await client.call_tool("jobs", {"action": "list"}))["jobs"]
            status = {"action": "status", "job_id": running["job_id"]}
            assert structured(await client.call_tool("jobs", status))["jobs"][0]["status"] == "running"
            tg.cancel_scope.cancel()

        after = structured(await client.call_tool("generate", {"prompt": "a dog", "seed": 2}))
        assert after["status"] == "done" and len(after["candidates"]) == 1
        listed = structured(await client.call_tool("jobs", {"action": "list"}))["jobs"]
    cancelled = [j for j in listed if j["status"] == "cancelled"]
    assert len(cancelled) == 1
    assert cancelled[0]["step"] < 60


@pytest.mark.slow
async def test_work_longer_than_max_wait_returns_a_job_handle_that_jobs_completes(make_settings):
    args = {"prompt": "a mountain lake", "n": 2, "seed": 21, "steps": 20, "width": 128, "height": 128}
    async with connect(make_settings(max_wait_s=0.05)) as client:
        started = structured(await client.call_tool("generate", args))
        assert started["status"] == "running" and started["candidates"] == []
        job_id = started["job"]["job_id"]
        waited = await client.call_tool("jobs", {"action": "wait", "job_id": job_id, "timeout_s": 120})
        out = structured(waited)
        assert out["jobs"][0]["status"] == "done"
        assert sum(1 for c in waited.content if c.type == "image") == 2
        # a later look (another waiter, a retry after a lost answer) returns the same result and previews
        again = await client.call_tool("jobs", {"action": "status", "job_id": job_id})
        assert structured(again)["result"] == out["result"]
        previews = [c.data for c in waited.content if c.type == "image"]
        assert [c.data for c in again.content if c.type == "image"] == previews
    async with connect(make_settings()) as client:
        direct = structured(await client.call_tool("generate", args))
    assert [c["id"] for c in out["result"]["candidates"]] == [c["id"] for c in direct["candidates"]]
    # while running, the call's model, size and steps are already its own, not blank defaults (tiny false)
    for key in ("model", "tiny", "prompt", "width", "height", "steps", "guidance"):
        assert started[key] == out["result"][key], key


async def test_jobs_explains_missing_and_unknown_job_ids(settings):
    async with connect(settings) as client:
        assert "job_id" in error_text(await client.call_tool("jobs", {"action": "status"}))
        assert "no job 'job_999'" in error_text(
            await client.call_tool("jobs", {"action": "wait", "job_id": "job_999"})
        )


BAD_ARGUMENTS = [
    ({"prompt": "x", "width": 100}, "width"),
    ({"prompt": "x", "height": 72 + 4}, "height"),
    ({"prompt": "x", "width": 4096, "height": 4096}, "width/height"),
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "steps": 10_000}, "steps"),
    ({"prompt": "x", "n": 99}, "n"),
    ({"prompt": "x", "n": 0}, "n"),
    ({"prompt": "x", "guidance": -1.0}, "guidance"),
    ({"prompt": "x", "model": "no-such-model"}, "model"),
    ({"prompt": "x", "model": "tiny-inpaint"}, "model"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x" * 5000}, "prompt"),
    ({"prompt": "x", "negative_prompt": "y" * 5000}, "negative_prompt"),
    ({"prompt": "x", "seed": -5}, "seed"),
]


async def test_bad_arguments_get_a_tool_error_naming_the_field_and_nothing_is_stored(settings, home):
    async with connect(settings) as client:
        await client.call_tool("generate", {"prompt": "warm-up", "seed": 1})
        before = stored_files(home)
        for arguments, field in BAD_ARGUMENTS:
            text = error_text(await client.call_tool("generate", arguments))
            assert re.search(rf"(^|[\s(]){re.escape(field)}: ", text), (arguments, text)
        assert stored_files(home) == before
        assert (
            structured(await client.call_tool("generate", {"prompt": "still up", "seed": 4}))["status"]
            == "done"
        )


async def test_missing_weights_for_a_configured_model_say_how_to_get_them(make_settings, tmp_path):
    settings = make_settings(profile="real")
    async with connect(settings) as client:
        text = error_text(await client.call_tool("generate", {"prompt": "a cat"}))
    assert "sdxl-turbo" in text and "hf download stabilityai/sdxl-turbo" in text


async def test_a_local_model_folder_that_is_not_a_pipeline_or_a_device_that_is_not_here_says_so(
    make_settings, tmp_path, models_path
):
    """A local source gets no `hf download <path>` advice: the folder is named with what is wrong with it.
    A device this torch cannot see is named with the spec, not raised as torch's own assertion."""
    from tools.models.loaders import ensure_tiny

    empty = tmp_path / "empty-model"
    empty.mkdir()
    partial = tmp_path / "partial-model"
    shutil.copytree(ensure_tiny("text2image", models_path), partial)
    for weights in (partial / "unet").glob("*.safetensors"):
        weights.write_bytes(weights.read_bytes()[:100])  # a download cut short
    settings = make_settings()
    tiny = settings.models["tiny"]

    def spec(name: str, **fields) -> object:
        return type(tiny).model_validate({**tiny.model_dump(), "name": name, **fields})

    specs = {s.name: s for s in (spec("empty", source=str(empty)), spec("partial", source=str(partial)),
                                 spec("on-gpu", device="cuda:1"))}  # fmt: skip
    settings = settings.model_copy(update={"models": {**settings.models, **specs}})
    async with connect(settings) as client:
        said = {name: error_text(await client.call_tool("generate", {"prompt": "a chair", "model": name}))
                for name in specs}  # fmt: skip
        assert (
            structured(await client.call_tool("generate", {"prompt": "a chair", "steps": 1}))["status"]
            == "done"
        )
    assert f"model 'empty': its source '{empty}' holds no model_index.json" in said["empty"]
    assert f"model 'partial': its source '{partial}' could not be loaded" in said["partial"]
    assert all(
        "hf download" not in said[name] or "--local-dir" in said[name] for name in ("empty", "partial")
    )
    assert (
        "model 'on-gpu': device 'cuda:1', but this torch" in said["on-gpu"]
        and 'device = "auto"' in said["on-gpu"]
    )
    with pytest.raises(ValueError, match="device"):
        spec("typo", device="gpu")


def save_tiny_lora(models_path: Path, dest: Path) -> None:
    """A LoRA for the tiny UNet, made with peft and saved the way diffusers trainers save one."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from tools.models.loaders import ensure_tiny

    pipe = StableDiffusionPipeline.from_pretrained(
        ensure_tiny("text2image", models_path), local_files_only=True
    )
    torch.manual_seed(0)
    config = LoraConfig(
        r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False
    )
    pipe.unet.add_adapter(config)
    StableDiffusionPipeline.save_lora_weights(dest, unet_lora_layers=get_peft_model_state_dict(pipe.unet))


async def test_a_lora_that_is_absent_or_corrupt_is_a_tool_error_that_says_what_to_do(make_settings, tmp_path):
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "pytorch_lora_weights.safetensors").write_bytes(b"not a safetensors file")
    settings = make_settings()
    tiny = settings.models["tiny"]
    specs = {
        name: type(tiny).model_validate({**tiny.model_dump(), "name": name, "lora": [{"source": source}]})
        for name, source in (("tiny-absent", str(tmp_path / "nowhere")), ("tiny-corrupt", str(corrupt)))
    }
    settings = settings.model_copy(update={"models": {**settings.models, **specs}})
    async with connect(settings) as client:
        absent = error_text(await client.call_tool("generate", {"prompt": "a chair", "model": "tiny-absent"}))
        broken = error_text(
            await client.call_tool("generate", {"prompt": "a chair", "model": "tiny-corrupt"})
        )
        assert (
            structured(await client.call_tool("generate", {"prompt": "a chair", "steps": 2}))["status"]
            == "done"
        )
    assert (
        f"its LoRA '{tmp_path / 'nowhere'}' does not exist" in absent
        and "Point the LoRA's `source`" in absent
    )
    assert f"its LoRA '{corrupt}' could not be loaded" in broken and "safetensors" in broken


async def test_model_work_that_fails_unexpectedly_is_a_tool_error_with_its_reason(settings):
    from server.context import run_work

    server = build_server(settings)

    async def explode(ctx: Context, oom: bool) -> CallToolResult:
        """A tool whose model work raises something that is not a ToolError."""

        def work(request, models, progress):
            raise RuntimeError(
                "CUDA out of memory. Tried to allocate 2.00 GiB" if oom else "index 7 is out of bounds"
            )

        return await run_work(
            ctx,
            "explode",
            "a failing test job",
            work,
            None,
            lambda out: out,
            lambda handle: handle,
            "generator",
        )

    server.add_tool(explode)
    async with Client(server) as client:
        oom = error_text(await client.call_tool("explode", {"oom": True}))
        other = error_text(await client.call_tool("explode", {"oom": False}))
        assert (
            structured(await client.call_tool("generate", {"prompt": "a chair", "steps": 2}))["status"]
            == "done"
        )
    assert "explode failed: RuntimeError: CUDA out of memory" in oom and "lower n" in oom
    assert "explode failed: RuntimeError: index 7 is out of bounds" in other and "stderr" in other


async def test_a_model_spec_with_a_lora_adapter_loads_it_and_changes_the_output(
    make_settings, models_path, tmp_path
):
    lora_dir = tmp_path / "lora"
    save_tiny_lora(models_path, lora_dir)
    settings = make_settings()
    tiny = settings.models["tiny"]
    with_lora = type(tiny).model_validate(
        {**tiny.model_dump(), "name": "tiny-lora", "lora": [{"source": str(lora_dir), "scale": 1.0}]}
    )
    settings = settings.model_copy(update={"models": {**settings.models, "tiny-lora": with_lora}})
    args = {"prompt": "a chair", "seed": 9, "steps": 2}
    async with connect(settings) as client:
        base = structured(await client.call_tool("generate", args))
        adapted = structured(await client.call_tool("generate", {**args, "model": "tiny-lora"}))
    assert adapted["model"].startswith("tiny-random tiny-lora")
    assert base["candidates"][0]["id"] != adapted["candidates"][0]["id"]


def test_guidance_must_be_a_finite_number():
    from mcp.server.mcpserver.exceptions import ToolError

    from tools.generate.request import check_request
    from tools.models.cache import ModelCache
    from tools.models.specs import PRESETS

    models = ModelCache(PRESETS, {}, "tiny", REPO / "unused")
    for guidance in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ToolError, match="guidance: "):
            check_request(
                prompt="x",
                negative_prompt=None,
                width=64,
                height=64,
                steps=2,
                guidance=guidance,
                seed=1,
                n=1,
                model=None,
                models=models,
                max_pixels=2**20,
                max_steps=50,
                max_batch=8,
                max_prompt_chars=100,
            )

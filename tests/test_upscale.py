"""upscale through the MCP client: the classical resize, the tiny generator's tiles and the tiny x4 upscaler on
scikit-image photographs."""

from __future__ import annotations

import json

import anyio
import numpy as np
import pytest
from PIL import Image, ImageFilter

from tests.conftest import connect, error_text, photo, saved, structured
from tools.upscale.tiles import Blender, boxes

pytestmark = pytest.mark.anyio


def stored(ref: dict) -> np.ndarray:
    with Image.open(ref["path"]) as img:
        return np.asarray(img)


def lanczos_and_unsharp(image: Image.Image, scale: int) -> np.ndarray:
    """The classical resize as the tool documents it, made here with PIL alone."""
    big = image.resize((image.width * scale, image.height * scale), Image.Resampling.LANCZOS)
    return np.asarray(big.filter(ImageFilter.UnsharpMask(radius=2.0, percent=40, threshold=2)))


def column_steps(pixels: np.ndarray) -> np.ndarray:
    """Mean absolute change from each column to the next (index x: between x - 1 and x)."""
    return np.abs(np.diff(pixels.astype(np.float32), axis=1)).mean(axis=(0, 2))


async def test_classical_and_creativity_zero_both_give_the_plain_lanczos_resize_bit_for_bit(settings, home):
    image = photo("astronaut", 40, 32)
    path = saved(home, image, "a.png")
    async with connect(settings) as client:
        classical = structured(
            await client.call_tool("upscale", {"image": path, "backend": "classical", "scale": 4})
        )
        tiled = structured(
            await client.call_tool(
                "upscale", {"image": path, "backend": "tiled", "scale": 4, "creativity": 0}
            )
        )
        auto = structured(await client.call_tool("upscale", {"image": path, "scale": 4, "creativity": 0}))
    expected = lanczos_and_unsharp(image, 4)
    for out in (classical, tiled, auto):
        assert out["size"] == [160, 128] and out["tiles"] == 0 and out["scale"] == 4
        assert np.array_equal(stored(out["image"]), expected)
        assert out["against_plain"]["identical"] and out["against_plain"]["mean_abs_diff"] == 0.0
    assert classical["backend"] == "classical" and "Lanczos" in classical["model"]
    assert tiled["backend"] == "tiled" and any("creativity 0" in note for note in tiled["notes"])
    assert classical["image"]["id"] == tiled["image"]["id"]  # the same pixels: one stored image


async def test_tiled_upscale_refines_each_native_tile_and_reports_how_far_it_moved(settings, home):
    image = photo("coffee", 48, 48)
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    args = {
        "image": saved(home, image, "c.png"),
        "backend": "tiled",
        "scale": 2,
        "creativity": 0.5,
        "steps": 2,
        "seed": 4,
        "prompt": "a cup of coffee",
    }
    async with connect(settings) as client:
        out = structured(await client.call_tool("upscale", args, progress_callback=on_progress))
        again = structured(await client.call_tool("upscale", args))
    # 96 px at the tiny generator's native 64 px: tiles at 0 and 32 on each axis
    assert out["size"] == [96, 96] and out["tiles"] == 4 and out["tile_size"] == 64 and out["overlap"] == 16
    pixels = stored(out["image"])
    assert pixels.shape == (96, 96, 3)
    moved = out["against_plain"]
    assert not moved["identical"] and moved["mean_abs_diff"] > 0 and moved["ssim"] < 1
    assert out["tiny"] and out["seed"] == 4 and out["seconds"] > 0
    assert {f"upscale tile {k}/4" for k in (1, 2, 3, 4)} <= {m.split(":")[0] for m in seen}
    assert again["image"]["id"] == out["image"]["id"]  # the same seed makes the same pixels


async def test_tiles_leave_no_seam_the_step_at_a_tile_border_is_no_larger_than_inside_tiles(settings, home):
    image = photo("chelsea", 48, 48)
    args = {
        "image": saved(home, image, "cat.png"),
        "backend": "tiled",
        "creativity": 0.5,
        "steps": 2,
        "seed": 7,
    }
    async with connect(settings) as client:
        out = structured(await client.call_tool("upscale", args))
    pixels = stored(out["image"]).astype(np.float32)
    # Tiles span 0..64 and 32..96 on each axis: pasted one over the other, the image would switch tiles
    # between rows/columns 31 and 32. The tiny model's tiles are noise, so the seam is looked for in the mean
    # level of each column (and row), where a pasted tile shows as a jump (2.9x the median step here, 2.9-6.7x
    # on other seeds); cross-faded, the step there is like the steps inside the tiles (1.3x).
    for axis in (0, 1):
        level = pixels.mean(axis=(1, 2)) if axis == 0 else pixels.mean(axis=(0, 2))
        steps = np.abs(np.diff(level))
        inside = np.delete(steps, [31, 63])
        assert steps[31] <= 2.2 * np.median(inside), (axis, steps[31], np.median(inside))


def test_the_feathered_blend_cross_fades_where_pasting_tiles_leaves_a_step():
    plan = boxes(96, 64, 64, 16)
    assert plan == [(0, 0, 64, 64), (32, 0, 96, 64)]
    found = {}
    for feathered in (True, False):
        blender = Blender(96, 64, plan, feathered=feathered)
        blender.add(plan[0], np.zeros((64, 64, 3), dtype=np.float32))
        blender.add(plan[1], np.full((64, 64, 3), 255.0, dtype=np.float32))
        found[feathered] = column_steps(blender.result())
    assert found[False].max() == 255  # pasted: one column jumps from the first tile to the second
    assert found[True].max() <= 255 / 32 + 1  # cross-faded over the 32 px overlap
    assert found[True].sum() == pytest.approx(255, abs=1)


async def test_the_x4_upscaler_twin_makes_four_times_the_size_on_native_tiles(settings, home):
    image = photo("rocket", 32, 32)
    args = {
        "image": saved(home, image, "r.png"),
        "backend": "x4-upscaler",
        "scale": 4,
        "creativity": 0.2,
        "steps": 1,
        "seed": 3,
        "prompt": "a rocket",
    }
    async with connect(settings) as client:
        out = structured(await client.call_tool("upscale", args))
        lineage = json.loads(
            (await client.read_resource(f"limner://images/{out['image']['id']}/lineage")).contents[0].text  # type: ignore[union-attr]
        )["lineage"]
    assert out["backend"] == "x4-upscaler" and out["size"] == [128, 128] and out["tiles"] == 1
    assert out["tile_size"] == 32 and out["tiny"] and "tiny-x4-upscaler" in out["model"]
    assert stored(out["image"]).shape == (128, 128, 3)
    assert lineage[0]["tool"] == "upscale" and lineage[0]["parents"] == [out["input_id"]]


async def test_a_cancelled_upscale_stops_between_tiles_and_stores_nothing(settings, home):
    image = photo("astronaut", 64, 64)
    path = saved(home, image, "a.png")
    first_step = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        first_step.set()

    async with connect(settings) as client:
        async with anyio.create_task_group() as tg:

            async def long_call() -> None:
                args = {"image": path, "backend": "tiled", "creativity": 1.0, "steps": 3, "seed": 1}
                await client.call_tool("upscale", args, None, on_progress)

            tg.start_soon(long_call)
            with anyio.fail_after(120):
                await first_step.wait()
            tg.cancel_scope.cancel()
        (running,) = structured(await client.call_tool("jobs", {"action": "list"}))["jobs"]
        waited = {"action": "wait", "job_id": running["job_id"], "timeout_s": 120}
        stopped = structured(await client.call_tool("jobs", waited))
        after = structured(await client.call_tool("upscale", {"image": path, "backend": "classical"}))
    (job,) = stopped["jobs"]
    assert stopped["result"] is None
    assert job["tool"] == "upscale" and job["status"] == "cancelled" and job["step"] < job["total"] == 9 * 3
    made = [json.loads(p.read_text())["tool"] for p in settings.images_dir.glob("*.json")]
    assert made.count("upscale") == 1 and after["backend"] == "classical"  # only the classical one


async def test_upscale_longer_than_max_wait_returns_a_job_handle_that_jobs_completes(make_settings, home):
    path = saved(home, photo("coffee", 32, 32), "c.png")
    async with connect(make_settings(max_wait_s=0.05)) as client:
        started = structured(
            await client.call_tool("upscale", {"image": path, "creativity": 0.5, "steps": 2, "seed": 2})
        )
        assert started["status"] == "running" and started["backend"] == "tiled"
        job_id = started["job"]["job_id"]
        done = structured(
            await client.call_tool("jobs", {"action": "wait", "job_id": job_id, "timeout_s": 300})
        )
    result = done["result"]
    assert result["status"] == "done" and result["size"] == [64, 64] and result["tiles"] == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"creativity": 1.5}, ["creativity"]),
        ({"scale": 3}, ["scale"]),
        ({"backend": "magic"}, ["backend"]),
        ({"backend": "x4-upscaler", "scale": 2}, ["x4-upscaler", "scale=4"]),
        ({"scale": 4, "backend": "classical"}, ["max_pixels", "4096"]),
        ({"backend": "classical", "model": "tiny"}, ["model", "classical"]),
        ({"backend": "tiled", "creativity": 0.3, "steps": 2}, ["steps/creativity", "at least 4"]),
        ({"image": "img_0000000000000000"}, ["no stored image"]),
    ],
)
async def test_upscale_refuses_bad_input_with_a_clear_error_and_stores_nothing(
    make_settings, home, args, words
):
    settings = make_settings(max_pixels=4096)
    path = saved(home, photo("astronaut", 24, 24), "x.png")
    async with connect(settings) as client:
        text = error_text(await client.call_tool("upscale", {"image": path, **args}))
    assert all(word in text for word in words), text
    assert not list(settings.images_dir.glob("*.png"))


@pytest.mark.parametrize("model", ["tiny-sdxl-turbo", "tiny-flux-schnell"])
async def test_tiled_upscale_runs_on_every_generator_architecture(settings, home, model):
    path = saved(home, photo("coffee", 32, 32), "c.png")
    args = {"image": path, "backend": "tiled", "creativity": 0.5, "steps": 2, "seed": 5, "model": model}
    async with connect(settings) as client:
        out = structured(await client.call_tool("upscale", args))
    assert out["size"] == [64, 64] and out["tiles"] == 1 and model in out["model"]
    assert not out["against_plain"]["identical"]

"""outpaint through the MCP client: the tiny inpainter on scikit-image photographs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import connect, error_text, photo, saved, structured

pytestmark = pytest.mark.anyio

BAND = 64 // 8  # the tiny inpainter's native size is 64 px: an eighth of it
PER_PASS = 64 // 2


def stored(ref: dict) -> np.ndarray:
    with Image.open(ref["path"]) as img:
        return np.asarray(img.convert("RGB"))


def assert_original_kept(out: np.ndarray, original: np.ndarray, grown: dict[str, int]) -> None:
    """Every original pixel more than BAND px from an edge the canvas grew past is in the output, bit for bit,
    where the growth puts it; and the band itself is where any change lies."""
    h, w = original.shape[:2]
    x, y = grown["left"], grown["top"]
    placed = out[y : y + h, x : x + w]
    keep = np.ones((h, w), dtype=bool)
    keep[:, :BAND] &= not grown["left"]
    keep[:, w - BAND :] &= not grown["right"]
    keep[:BAND, :] &= not grown["top"]
    keep[h - BAND :, :] &= not grown["bottom"]
    assert np.array_equal(placed[keep], original[keep])


async def test_outpaint_grows_each_side_and_keeps_every_original_pixel_outside_the_band(settings, home):
    original = photo("astronaut", 48, 40)
    args = {
        "image": saved(home, original, "a.png"),
        "prompt": "a wider view",
        "left": 8,
        "top": 4,
        "right": 16,
        "bottom": 12,
        "seed": 3,
        "steps": 2,
    }
    async with connect(settings) as client:
        out = structured(await client.call_tool("outpaint", args))
    assert out["status"] == "done" and out["size"] == [48 + 24, 40 + 16]
    assert out["growth"] == {"left": 8, "top": 4, "right": 16, "bottom": 12}
    assert out["original_box"] == [8, 4, 56, 44] and out["passes"] == 1 and out["tiny"]
    assert out["preserved"] == {"band_px": BAND, "changed_outside_band": 0, "passed": True}
    (image,) = out["images"]
    pixels = stored(image)
    assert pixels.shape == (56, 72, 3)
    assert_original_kept(pixels, np.asarray(original), out["growth"])
    # the band along the grown edges was blended into the new area: some of its pixels moved
    assert not np.array_equal(pixels[4:44, 8 : 8 + BAND], np.asarray(original)[:, :BAND])
    assert out["input_id"] and image["id"] != out["input_id"]


async def test_outpaint_to_an_aspect_grows_the_shorter_dimension_evenly_on_both_sides(settings, home):
    original = photo("coffee", 48, 36)
    args = {
        "image": saved(home, original, "c.png"),
        "prompt": "a cafe table",
        "aspect": "16:9",
        "seed": 1,
        "steps": 1,
        "n": 2,
    }
    async with connect(settings) as client:
        out = structured(await client.call_tool("outpaint", args))
    assert out["size"] == [64, 36] and out["growth"] == {"left": 8, "top": 0, "right": 8, "bottom": 0}
    assert len(out["images"]) == 2 and out["seeds"] == [1, 2]
    for image in out["images"]:
        assert_original_kept(stored(image), np.asarray(original), out["growth"])
    assert not np.array_equal(stored(out["images"][0]), stored(out["images"][1]))


async def test_growth_beyond_half_the_native_size_runs_in_passes_and_still_keeps_the_original(settings, home):
    original = photo("chelsea", 32, 32)
    seen: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(message or "")

    args = {
        "image": saved(home, original, "cat.png"),
        "prompt": "a cat on a sofa",
        "right": 70,
        "seed": 2,
        "steps": 1,
    }
    async with connect(settings) as client:
        out = structured(await client.call_tool("outpaint", args, progress_callback=on_progress))
    assert out["passes"] == 3 and out["max_growth_per_pass"] == PER_PASS and out["size"] == [102, 32]
    assert any("passes" in note for note in out["notes"])
    assert {f"pass {p}/3" for p in (1, 2, 3)} <= {part for m in seen for part in _passes(m)}
    assert out["preserved"]["passed"]
    assert_original_kept(stored(out["images"][0]), np.asarray(original), out["growth"])


def _passes(message: str) -> list[str]:
    words = message.split()
    return [f"pass {words[i + 1]}" for i, word in enumerate(words[:-1]) if word == "pass"]


async def test_outpaint_records_the_input_as_the_parent_in_the_lineage(settings, home):
    original = photo("rocket", 40, 48)
    async with connect(settings) as client:
        out = structured(
            await client.call_tool(
                "outpaint", {"image": saved(home, original, "r.png"), "prompt": "sky", "top": 8, "steps": 1}
            )
        )
        lineage = await client.read_resource(f"limner://images/{out['images'][0]['id']}/lineage")
    made, parent = json.loads(lineage.contents[0].text)["lineage"]  # type: ignore[union-attr]
    assert made["tool"] == "outpaint" and made["parents"] == [out["input_id"]]
    assert parent["id"] == out["input_id"] and parent["tool"] == "input"


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({}, ["no growth", "aspect='16:9'"]),
        ({"left": 0, "right": 0}, ["no growth"]),
        ({"left": 8, "aspect": "16:9"}, ["not both", "left"]),
        ({"aspect": "wide"}, ["aspect", "'W:H'"]),
        ({"aspect": "0:9"}, ["aspect", "positive"]),
        ({"aspect": "4:3"}, ["already is 4:3"]),
        ({"left": -8}, ["left"]),
        ({"right": 4000}, ["max_pixels", "16384"]),
        ({"image": "img_0000000000000000", "left": 8}, ["no stored image", "img_0000000000000000"]),
    ],
)
async def test_outpaint_refuses_bad_input_with_a_clear_error_and_stores_nothing(
    make_settings, home, args, words
):
    settings = make_settings(max_pixels=4096 * 4)
    image = saved(home, photo("astronaut", 48, 36), "x.png")
    async with connect(settings) as client:
        before = (
            sorted(p.name for p in settings.images_dir.glob("*.png")) if settings.images_dir.exists() else []
        )
        text = error_text(await client.call_tool("outpaint", {"image": image, "prompt": "more", **args}))
        after = (
            sorted(p.name for p in settings.images_dir.glob("*.png")) if settings.images_dir.exists() else []
        )
    assert all(word in text for word in words), text
    assert after == before


@pytest.mark.slow
async def test_outpaint_runs_on_the_sdxl_inpainter_twin_and_keeps_the_original(settings, home):
    original = photo("coffee", 40, 40)
    args = {
        "image": saved(home, original, "c.png"),
        "prompt": "a table",
        "left": 12,
        "bottom": 8,
        "steps": 1,
        "seed": 4,
        "model": "tiny-sdxl-inpaint",
    }
    async with connect(settings) as client:
        out = structured(await client.call_tool("outpaint", args))
    assert out["size"] == [52, 48] and "tiny-sdxl-inpaint" in out["model"] and out["preserved"]["passed"]
    assert_original_kept(stored(out["images"][0]), np.asarray(original), out["growth"])

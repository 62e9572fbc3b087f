"""generate on an editor (QwenImageEditPlusPipeline): new images from the references as its input images, through
the MCP client, on the tiny twin of qwen-image-edit.

The twin encodes every input image at ~1 megapixel, as the real pipeline does (about 1.6 s an image on 2 CPU
cores), and runs true CFG at its default guidance (two transformer passes a step): the end-to-end test is slow.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from tests.conftest import connect, error_text, structured

pytestmark = pytest.mark.anyio

EDITOR = "tiny-qwen-image-edit"
CALL = {
    "prompt": "the cup on a marble table",
    "model": EDITOR,
    "width": 64,
    "height": 64,
    "seed": 5,
    "steps": 2,
}


def stored_files(home: Path) -> list[str]:
    images = home / "images"
    return sorted(p.name for p in images.iterdir()) if images.exists() else []


def pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def photo(home: Path, name: str, size: tuple[int, int]) -> str:
    """A scikit-image photograph saved inside LIMNER_HOME (a folder generate may read): its path."""
    home.mkdir(parents=True, exist_ok=True)
    path = home / f"{name}.png"
    Image.fromarray(getattr(data, name)()).convert("RGB").resize(size, Image.Resampling.LANCZOS).save(path)
    return str(path)


async def lineage(client, image_id: str) -> list[dict]:
    resource = await client.read_resource(f"limner://images/{image_id}/lineage")
    return json.loads(resource.contents[0].text)["lineage"]


@pytest.mark.slow
async def test_the_editor_makes_new_images_from_its_references_reproducibly_and_lists_them_in_lineage(
    settings, home
):
    coffee = photo(home, "coffee", (48, 32))  # not square: the output size is the call's, not the image's
    astronaut = photo(home, "astronaut", (32, 32))
    seen: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total))

    async with connect(settings) as client:
        first = structured(
            await client.call_tool(
                "generate", {**CALL, "references": [coffee], "n": 2}, progress_callback=on_progress
            )
        )
        again = structured(await client.call_tool("generate", {**CALL, "references": [coffee], "n": 2}))
        both = structured(
            await client.call_tool("generate", {**CALL, "references": [astronaut, coffee], "n": 2})
        )
        chains = [await lineage(client, c["id"]) for c in (first["candidates"][0], both["candidates"][0])]
    assert seen == [(1, 2), (2, 2)]  # one progress report per denoising step
    for out in (first, both):
        assert out["references_through"] == "editor" and out["adapter"] is None
        assert out["reference_strength"] is None and out["steps_run"] == 2
        assert out["model"].startswith(f"tiny-random {EDITOR} ") and out["tiny"] is True
        assert "made by the editor from" in out["note"]
        assert all((c["width"], c["height"]) == (64, 64) for c in out["candidates"])
    # one seed per candidate, each reproducible: the same call gives the same pixels
    assert [c["seed"] for c in first["candidates"]] == [5, 6]
    assert [c["id"] for c in again["candidates"]] == [c["id"] for c in first["candidates"]]
    a, b = (pixels(c["path"]) for c in first["candidates"])
    assert np.abs(a - b).mean() > 1  # the two seeds make two images
    # the references are the editor's input: another list makes another image from the same seeds (the
    # same call reproduces to the bit, above, so any difference is theirs; on random weights it is small)
    for made_with, made_without in zip(both["candidates"], first["candidates"], strict=True):
        changed = np.abs(pixels(made_with["path"]) - pixels(made_without["path"]))
        assert made_with["id"] != made_without["id"] and (changed > 0).mean() > 0.01
    # lineage: the references are the parents, stored with their own pixels, in the order given
    made, *ancestors = chains[0]
    assert made["tool"] == "generate" and made["parents"] == first["references"]
    assert made["params"]["references"] == first["references"] and made["params"]["model"] == EDITOR
    (reference,) = ancestors
    assert reference["tool"] == "input" and np.array_equal(
        pixels(str(home / "images" / f"{reference['id']}.png")), pixels(coffee)
    )
    made_both = chains[1][0]
    assert made_both["parents"] == both["references"] and len(both["references"]) == 2
    assert both["references"][1] == first["references"][0]  # the same coffee image, the same store id


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            {},
            f"references: the editor '{EDITOR}' makes images from input images and needs at least one; pass "
            "references=[...]",
        ),
        ({"references": []}, f"references: the editor '{EDITOR}' makes images from input images"),
        ({"references": ["REF"], "reference_strength": 0.5}, "reference_strength: the editor"),
        ({"references": ["REF"], "init_image": "REF"}, "init_image: the editor"),
        (
            {"references": ["REF"], "width": 72},
            f"width: 72 must be a multiple of 16 and at least 64 for {EDITOR}",
        ),  # the editor's 16 px size factor
        (
            {"references": ["REF"], "model": "tiny-flux-schnell"},
            f"an editor reads them as its input images: model='{EDITOR}'",
        ),
    ],
)
async def test_bad_editor_calls_are_refused_with_the_field_before_any_model_loads(
    settings, home, args, expected
):
    ref = photo(home, "coffee", (48, 32))
    call = {**CALL, **args}
    for field in ("references", "init_image"):
        if field in call:
            value = call[field]
            call[field] = [ref if r == "REF" else r for r in value] if isinstance(value, list) else ref
    before = stored_files(home)
    async with connect(settings) as client:
        result = await client.call_tool("generate", call)
        assert expected in error_text(result)
        assert stored_files(home) == before
        listing = structured(await client.call_tool("models", {"action": "list"}))
    assert not any(m["loaded"] for m in listing["models"])  # refused before any model was loaded

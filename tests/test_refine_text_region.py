"""refine_region(region="the mug handle"): a region named in words is located (detector, then segmenter) in the
model step and refined exactly as a mask is, on real photographs with the tiny twins, through the MCP client.

The twins have random weights, so the threshold is 0 (something is always found) and the tests hold what does
not depend on the weights: the match refined is locate's match of that rank (box, score, mask), the mask
refined is the stored mask_id's pixels, every pixel outside the blend mask is bit-identical, ties are listed,
and every bad input is an error naming its field with nothing stored.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from server.settings import Settings, load_settings
from tests.conftest import connect, error_text, structured
from tools.core.images import ImageStore, Resolved
from tools.core.jobs import Job
from tools.models.cache import ModelCache
from tools.models.detection import CLOSE_SCORE, Detection, close_matches
from tools.refine_region.request import check_region_query, check_request
from tools.refine_region.result import finish
from tools.refine_region.work import RefineWork, work

pytestmark = pytest.mark.anyio

CLASSICAL = {"backend": "classical", "blend_dilate": 1, "blend_blur": 1, "prompt": "remove it"}


def photo(name: str, side: int = 64) -> np.ndarray:
    return cv2.resize(getattr(data, name)(), (side, side), interpolation=cv2.INTER_AREA)


def data_uri(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def read(home: Path, image_id: str) -> tuple[np.ndarray, dict[str, Any]]:
    path = home / "images" / f"{image_id}.png"
    with Image.open(path) as img:
        return np.asarray(img), json.loads(path.with_suffix(".json").read_text())


def stored(home: Path) -> list[str]:
    folder = home / "images"
    return sorted(p.name for p in folder.glob("*.png")) if folder.exists() else []


def assert_outside_blend_unchanged(home: Path, out: dict[str, Any], pixels: np.ndarray) -> None:
    after, _ = read(home, out["image"]["id"])
    blend, _ = read(home, out["mask_id"])
    outside = blend == 0
    assert outside.any(), "the located mask covers the whole image: nothing to hold unchanged"
    assert np.array_equal(after[outside], pixels[outside])
    assert out["metrics"]["changed_outside_blend"] == 0


async def locate_all(client: Any, image: str, name: str) -> list[dict[str, Any]]:
    """Every match locate finds for `name` at threshold 0, best first: what refine_region chooses among."""
    out = structured(
        await client.call_tool(
            "locate", {"image": image, "objects": [name], "threshold": 0.0, "max_per_object": 25}
        )
    )
    return out["found"]


@pytest.mark.slow
async def test_a_named_region_is_located_stored_and_refined_with_every_pixel_outside_the_blend_mask_unchanged(
    settings, home
):
    pixels = photo("chelsea")
    image = data_uri(pixels)
    async with connect(settings) as client:
        found = await locate_all(client, image, "cat")
        out = structured(
            await client.call_tool(
                "refine_region",
                {
                    "image": image,
                    "region": "cat",
                    "threshold": 0.0,
                    "prompt": "a sleeping cat",
                    "steps": 2,
                    "seed": 1,
                    "blend_dilate": 1,
                    "blend_blur": 1,
                },
            )
        )
    located = out["located"]
    best = found[0]
    assert located["region"] == "cat" and located["instance"] == 1 and located["matches"] == len(found)
    assert located["box"] == best["box"] and located["score"] == best["score"]
    x1, y1, x2, y2 = located["box"]
    assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64
    assert out["tiny"] and "tiny-grounding-dino-tiny" in located["detector"]
    assert "tiny-sam-vit-base" in located["segmenter"]
    # the mask refined is the stored mask: the located mask_id is the region (paste_back='mask')
    mask, meta = read(home, located["mask_id"])
    region, _ = read(home, out["region_mask_id"])
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
    assert np.array_equal(mask > 0, region > 0) and out["metrics"]["region_pixels"] == int((mask > 0).sum())
    assert meta["tool"] == "locate" and meta["parents"] == [out["input_id"]] and meta["box"] == located["box"]
    assert meta["params"]["object"] == "cat"
    # locate's mask for the same box (all boxes in one segmenter pass) is the same mask, so the same stored id
    assert located["mask_id"] == best["mask_id"]
    assert out["mask_read"].startswith(f"located 'cat': instance 1 of {len(found)}")
    assert_outside_blend_unchanged(home, out, pixels)
    assert out["metrics"]["mse_region"] > 0
    _, output_meta = read(home, out["image"]["id"])
    assert output_meta["located"]["mask_id"] == located["mask_id"]


async def test_instance_2_refines_the_second_best_match_with_its_own_box_score_and_mask(settings, home):
    pixels = photo("coffee")
    image = data_uri(pixels)
    async with connect(settings) as client:
        found = await locate_all(client, image, "cup")
        out = structured(
            await client.call_tool(
                "refine_region",
                {"image": image, "region": "cup", "instance": 2, "threshold": 0.0, **CLASSICAL},
            )
        )
    assert len(found) >= 2
    located, second = out["located"], found[1]
    assert located["instance"] == 2 and located["matches"] == len(found)
    assert (located["box"], located["score"]) == (second["box"], second["score"])
    assert located["box"] != found[0]["box"]
    mask, _ = read(home, located["mask_id"])
    region, _ = read(home, out["region_mask_id"])
    assert located["mask_id"] == second["mask_id"]  # the same pixels as locate's mask for that box
    assert np.array_equal(mask > 0, region > 0)
    assert out["backend"] == "classical" and out["tiny"]  # the twins located it
    assert_outside_blend_unchanged(home, out, pixels)


async def test_matches_within_the_close_score_of_the_best_are_listed_for_the_agent_to_pick(settings, home):
    image = data_uri(photo("astronaut"))
    async with connect(settings) as client:
        found = await locate_all(client, image, "helmet")
        out = structured(
            await client.call_tool(
                "refine_region", {"image": image, "region": "helmet", "threshold": 0.0, **CLASSICAL}
            )
        )
    best = found[0]["score"]
    expected = [
        {"instance": k, "score": f["score"], "box": f["box"]}
        for k, f in enumerate(found, start=1)
        if f["score"] >= best - CLOSE_SCORE
    ]
    assert len(expected) >= 2, "the twin's scores no longer tie: pick a photograph where they do"
    assert out["located"]["close"] == expected
    (note,) = [n for n in out["notes"] if "within 0.05 of the best" in n]
    assert f"{len(expected)} matches of 'helmet'" in note and "instance 1 was refined" in note
    assert f"instance=2 (score {expected[1]['score']:g}, box {expected[1]['box']})" in note


def test_close_matches_are_every_score_within_the_margin_of_the_best_and_none_when_the_best_stands_out():
    def found(*scores: float) -> list[Detection]:
        return [Detection("mug", s, (0, 0, 1, 1), (0.0, 0.0, 1.0, 1.0)) for s in scores]

    assert close_matches(found(0.9, 0.86, 0.85, 0.5)) == [0, 1, 2]
    assert close_matches(found(0.9, 0.84, 0.5)) == []
    assert close_matches(found(0.9)) == [] and close_matches([]) == []


async def test_bad_region_arguments_are_errors_naming_the_field_and_store_nothing(settings, home):
    image = data_uri(photo("coffee", 48))
    cases = [
        ({"region": "cup", "mask": image}, "region: 'cup' names the region in words and mask gives it too"),
        ({"region": "cup", "bbox": [0, 0, 8, 8]}, "and bbox gives it too; pass one"),
        ({"region": "cup", "points": [[3, 3]], "radius": 2}, "and points gives it too"),
        ({"region": "   "}, "region: an empty name"),
        ({"region": "a cup. a saucer"}, "region: 'a cup. a saucer' holds a '.'"),
        ({"region": "x" * 101}, "region: 101 characters is over the limit of 100"),
        ({"region": "cup", "instance": 0}, "instance: input should be greater than or equal to 1"),
        ({"region": "cup", "instance": 26}, "instance: input should be less than or equal to 25"),
        ({"region": "cup", "threshold": 1.5}, "threshold: input should be less than or equal to 1"),
        ({"bbox": [0, 0, 8, 8], "instance": 2}, "instance: 2 only applies to a region named in words"),
        ({"bbox": [0, 0, 8, 8], "threshold": 0.2}, "threshold: 0.2 only applies to a region named in words"),
        ({"region": "cup", "threshold": 1.0}, "region: nothing matching 'cup' scored above threshold 1 (the best candidate scored"),
    ]  # fmt: skip
    async with connect(settings) as client:
        for arguments, expected in cases:
            result = await client.call_tool("refine_region", {"image": image, **CLASSICAL, **arguments})
            assert expected in error_text(result), (arguments, error_text(result))
        assert stored(home) == []
        found = await locate_all(client, image, "cup")
        before = stored(home)
        beyond = len(found) + 1
        assert beyond <= 25, "the twin found 25 matches: no instance is beyond them"
        text = error_text(
            await client.call_tool(
                "refine_region",
                {"image": image, "region": "cup", "instance": beyond, "threshold": 0.0, **CLASSICAL},
            )
        )
        assert f"instance: {beyond} is beyond the {len(found)} match(es) of 'cup'" in text
        assert f"use instance 1..{len(found)}" in text
        assert stored(home) == before
        # the server is still up
        assert structured(
            await client.call_tool(
                "refine_region", {"image": image, "region": "cup", "threshold": 0, **CLASSICAL}
            )
        )["located"]


async def test_without_a_detector_or_segmenter_a_named_region_names_the_missing_role(home, models_path):
    def settings(**environ: str) -> Settings:
        flags = {"home": home, "profile": "real", "models_path": models_path, "max_wait_s": 600}
        return load_settings(flags=flags, environ=environ)

    image = data_uri(photo("coffee", 48))
    arguments = {"image": image, "region": "cup", **CLASSICAL}
    async with connect(settings()) as client:
        text = error_text(await client.call_tool("refine_region", arguments))
    assert "detector role: region='cup' is located with a detector and none can be loaded" in text
    assert "grounding-dino-tiny" in text and "pass the region as mask, bbox or points" in text
    async with connect(settings(LIMNER_DETECTOR_MODEL="tiny-owlv2-base")) as client:
        text = error_text(await client.call_tool("refine_region", arguments))
        assert "segmenter role: region='cup' is masked with a segmenter" in text and "sam-vit-base" in text
        # a region given as a box needs neither
        boxed = structured(
            await client.call_tool("refine_region", {"image": image, "bbox": [4, 4, 12, 12], **CLASSICAL})
        )
    assert boxed["located"] is None
    ids = {boxed["input_id"], boxed["image"]["id"], boxed["mask_id"], boxed["region_mask_id"]}
    assert stored(home) == sorted(f"{i}.png" for i in ids)  # the refusals stored nothing


def test_refine_work_with_a_named_region_pickles_and_finishes_into_the_same_stored_ids(settings, tmp_path):
    models = ModelCache(settings.models, settings.roles, settings.profile, settings.models_dir)
    request = check_request(
        prompt="remove it",
        backend="classical",
        model=None,
        reference=None,
        margin=8,
        focus=True,
        focus_size=None,
        steps=None,
        strength=1.0,
        guidance=None,
        seed=None,
        blend_dilate=1,
        blend_blur=1,
        paste_back="mask",
        models=models,
        max_steps=settings.max_steps,
        max_pixels=settings.max_pixels,
        max_prompt_chars=settings.max_prompt_chars,
    )
    query = check_region_query(
        region="cat", instance=2, threshold=0.0, mask=None, bbox=None, points=None, models=models
    )
    assert query is not None
    given = RefineWork(
        request, Resolved(Image.fromarray(photo("chelsea", 48)), None, "data"), None, None, query
    )
    sent = pickle.loads(pickle.dumps(given))
    output = work(sent, models, Job(id="job_1", tool="refine_region", description="pickle round trip"))
    returned = pickle.loads(pickle.dumps(output))
    local, _ = finish(given, output, ImageStore(tmp_path / "here"))
    remote, _ = finish(sent, returned, ImageStore(tmp_path / "there"))
    assert local.located is not None and local.located.instance == 2
    assert local.image is not None and remote.image is not None
    assert local.image.id == remote.image.id
    differ: Any = {"timings": True, "image": {"path"}}  # the two stores' folders
    assert local.model_dump(exclude=differ) == remote.model_dump(exclude=differ)

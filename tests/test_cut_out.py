"""cut_out: an object as an RGBA PNG whose alpha is its mask, on real photographs, through the MCP client; and
generate's foreground found by the segmenter when one is configured.

The detector and segmenter twins have random weights, so these tests hold the plumbing and its invariants:
the alpha IS the stored mask (cropped as the result says), the colour under it IS the source, the most
salient object is the one the documented rule picks, GrabCut stands in (and says so) where a role is
missing, and bad input is refused before anything is stored.
"""

from __future__ import annotations

import base64
import io
import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from mcp import Client, StdioServerParameters
from mcp_types import ImageContent
from PIL import Image
from skimage import data

from server.settings import Settings, load_settings
from tests.conftest import REPO, connect, error_text, server_env, structured
from tools.core.masks import expand, tight_bbox
from tools.cut_out import work as cut_work
from tools.models import detection
from tools.models.cache import ModelCache

pytestmark = pytest.mark.anyio


def photo(name: str, width: int, height: int) -> np.ndarray:
    return cv2.resize(getattr(data, name)(), (width, height), interpolation=cv2.INTER_AREA)


def product_shot() -> np.ndarray:
    """A real photographed cup on a plain, slightly noisy backdrop, at [20, 23, 60, 57]."""
    rng = np.random.default_rng(0)
    canvas = np.clip(235 + rng.normal(0, 2, (64, 80, 3)), 0, 255).astype(np.uint8)
    canvas[23:57, 20:60] = cv2.resize(data.coffee()[60:340, 120:460], (40, 34), interpolation=cv2.INTER_AREA)
    return canvas


def data_uri(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def stored(home: Path) -> list[str]:
    folder = home / "images"
    return sorted(p.name for p in folder.glob("*.png")) if folder.exists() else []


def read(home: Path, image_id: str) -> tuple[Image.Image, dict]:
    path = home / "images" / f"{image_id}.png"
    with Image.open(path) as img:
        img.load()
    return img, json.loads(path.with_suffix(".json").read_text())


def without_models(home: Path, models_path: Path, **environ: str) -> Settings:
    """The real profile with no weights on disk: no segmenter and no detector can be loaded."""
    flags = {"home": home, "profile": "real", "models_path": models_path, "max_wait_s": 600}
    return load_settings(flags=flags, environ=environ)


def cropped(mask: np.ndarray) -> list[int]:
    """The crop the result should report: the mask's box and a 2 px margin, inside the image."""
    box = tight_bbox(mask)
    assert box is not None
    return list(expand(box, 2, mask.shape[1], mask.shape[0]))


def assert_cut_out_is_the_mask_over_the_source(out: dict, home: Path, source: np.ndarray) -> np.ndarray:
    """The stored cut-out is RGBA; its alpha is the stored mask cropped to crop_box, exactly; its colour is
    the source's wherever alpha > 0 and transparent black elsewhere. Returns the mask."""
    cut, cut_meta = read(home, out["image"]["id"])
    mask_image, mask_meta = read(home, out["mask_id"])
    mask = np.asarray(mask_image) > 0
    assert cut.mode == "RGBA" and mask_image.size == (source.shape[1], source.shape[0])
    assert set(np.unique(np.asarray(mask_image))) <= {0, 255}
    x1, y1, x2, y2 = out["crop_box"]
    rgba = np.asarray(cut)
    assert rgba.shape == (y2 - y1, x2 - x1, 4)
    assert np.array_equal(rgba[..., 3], mask[y1:y2, x1:x2].astype(np.uint8) * 255)
    visible = rgba[..., 3] > 0
    assert visible.any() and np.array_equal(rgba[visible][:, :3], source[y1:y2, x1:x2][visible])
    assert not rgba[~visible].any()
    assert out["box"] == list(tight_bbox(mask) or ()) and out["area"] == int(mask.sum())
    assert 0 < out["area"] < mask.size
    assert mask_meta["parents"] == [out["source_id"]] and mask_meta["tool"] == "cut_out"
    assert cut_meta["parents"] == [out["source_id"], out["mask_id"]]
    return mask


async def test_a_named_object_comes_back_as_rgba_whose_alpha_is_its_stored_mask_over_the_source(
    settings, home
):
    pixels = photo("coffee", 64, 43)
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with connect(settings) as client:
        result = await client.call_tool(
            "cut_out",
            {"image": data_uri(pixels), "object": "cup", "threshold": 0.0},
            progress_callback=on_progress,
        )
    out = structured(result)
    assert out["status"] == "done" and out["method"] == "detector + segmenter" and out["tiny"]
    assert "tiny-grounding-dino-tiny" in out["detector"] and "tiny-sam-vit-base" in out["segmenter"]
    text, preview = result.content
    assert text.type == "text" and isinstance(preview, ImageContent) and preview.mime_type == "image/webp"
    source, source_meta = read(home, out["source_id"])
    assert np.array_equal(np.asarray(source), pixels) and source_meta["tool"] == "input"
    mask = assert_cut_out_is_the_mask_over_the_source(out, home, pixels)
    x1, y1, x2, y2 = out["detection_box"]
    assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 43 and 0 < out["score"] <= 1 and out["matches"] >= 1
    assert out["crop_box"] == cropped(mask)
    assert 0 <= out["mask_score"] <= 1 and seen == [1, 2]


async def test_crop_false_keeps_the_image_size_and_feather_softens_only_a_band_around_the_edge(
    home, models_path
):
    pixels = product_shot()  # GrabCut's compact mask leaves clear background around the cup
    async with connect(without_models(home, models_path)) as client:
        out = structured(
            await client.call_tool("cut_out", {"image": data_uri(pixels), "crop": False, "feather": 3})
        )
    assert out["crop_box"] == [0, 0, 80, 64] and out["feather"] == 3
    cut, _ = read(home, out["image"]["id"])
    mask = np.asarray(read(home, out["mask_id"])[0]) > 0
    rgba = np.asarray(cut)
    alpha = rgba[..., 3]
    assert rgba.shape == (64, 80, 4)
    # the blur reaches 3 px each side of the mask's edge: deeper inside is opaque, farther outside is clear
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5) > 4
    outside = cv2.distanceTransform((~mask).astype(np.uint8), cv2.DIST_L2, 5) > 4
    assert inside.any() and outside.any()
    assert (alpha[inside] == 255).all() and (alpha[outside] == 0).all()
    assert ((alpha > 0) & (alpha < 255)).any()
    visible = alpha > 0
    assert np.array_equal(rgba[visible][:, :3], pixels[visible]) and not rgba[~visible].any()


async def test_without_a_name_the_most_salient_proposal_by_the_documented_rule_is_cut_out(settings, home):
    pixels = photo("astronaut", 64, 64)
    async with connect(settings) as client:
        out = structured(await client.call_tool("cut_out", {"image": data_uri(pixels)}))
    assert out["method"] == "segmenter (most salient)" and out["object"] is None and out["detector"] is None
    mask = assert_cut_out_is_the_mask_over_the_source(out, home, pixels)
    # the same proposals, ranked by the rule, give the very mask and salience the tool stored
    models = ModelCache(settings.models, settings.roles, settings.profile, settings.models_dir)
    seg, index, proposals = detection.segment_points(
        models.get("segmenter"), Image.fromarray(pixels), cut_work.grid_points(64, 64), cut_work.most_salient
    )
    assert seg is not None and index is not None and len(proposals.scores) == 75
    assert np.array_equal(seg.mask, mask)
    ranked = cut_work.salience(proposals.masks[index], float(proposals.scores[index]))
    assert ranked is not None and out["score"] == round(ranked[0], 4) and out["mask_score"] == seg.score
    others = [cut_work.salience(m, float(s)) for m, s in zip(proposals.masks, proposals.scores, strict=True)]
    assert all(r is None or r <= ranked for r in others)


def test_the_salience_rule_prefers_a_centred_object_to_the_background_the_frame_and_a_corner_speck():
    side = 32
    centred = np.zeros((side, side), bool)
    centred[10:22, 9:23] = True
    corner = np.zeros((side, side), bool)
    corner[0:8, 0:8] = True
    background = ~centred  # touches all four edges
    frame = np.ones((side, side), bool)
    speck = np.zeros((side, side), bool)
    speck[15, 15] = True  # under 1 % of the image
    masks = np.stack([background, frame, corner, speck, centred])

    def proposals(scores: list[float]) -> detection.Proposals:
        return detection.Proposals(masks, np.array(scores), [(16.0, 16.0)] * len(scores))

    # the background and the frame score highest by predicted IoU, yet are no object; the corner is off-centre
    assert cut_work.most_salient(proposals([0.99, 0.99, 0.9, 0.95, 0.8])) == 4
    # an untrained model predicts the same IoU (here 0) for all: the centre and size prior decides
    assert cut_work.most_salient(proposals([0.0] * 5)) == 4
    # a much more confident corner object wins over a doubtful centred one: the IoU counts
    assert cut_work.most_salient(proposals([0.99, 0.99, 0.9, 0.95, 0.01])) == 2
    assert (
        cut_work.most_salient(detection.Proposals(masks[:2], np.array([0.9, 0.9]), [(0.0, 0.0)] * 2)) is None
    )


async def test_without_a_segmenter_or_detector_grabcut_cuts_the_object_and_the_result_says_so(
    home, models_path
):
    pixels = product_shot()
    async with connect(without_models(home, models_path)) as client:
        salient = structured(await client.call_tool("cut_out", {"image": data_uri(pixels)}))
        named = structured(await client.call_tool("cut_out", {"image": data_uri(pixels), "object": "cup"}))
    assert salient["method"] == "grabcut (no segmenter)" and salient["segmenter"] is None
    assert any("GrabCut made the alpha" in w and "segmenter role" in w for w in salient["warnings"])
    x1, y1, x2, y2 = salient["box"]
    assert abs(x1 - 20) <= 3 and abs(y1 - 23) <= 3 and abs(x2 - 60) <= 3 and abs(y2 - 57) <= 3
    mask = assert_cut_out_is_the_mask_over_the_source(salient, home, pixels)
    assert salient["crop_box"] == cropped(mask) and salient["score"] is None
    assert named["method"] == "grabcut (no detector)" and named["detector"] is None
    assert any("the name 'cup' was not read" in w for w in named["warnings"])
    assert named["mask_id"] == salient["mask_id"]  # the same model-free cut
    # a detector but no segmenter: GrabCut inside the detector's box
    async with connect(without_models(home, models_path, LIMNER_DETECTOR_MODEL="tiny-owlv2-base")) as client:
        boxed = structured(
            await client.call_tool("cut_out", {"image": data_uri(pixels), "object": "cup", "threshold": 0.0})
        )
    assert "tiny-owlv2-base" in boxed["detector"] and boxed["segmenter"] is None
    assert_cut_out_is_the_mask_over_the_source(boxed, home, pixels)
    bx1, by1, bx2, by2 = boxed["detection_box"]
    x1, y1, x2, y2 = boxed["box"]
    assert bx1 <= x1 and by1 <= y1 and x2 <= bx2 and y2 <= by2
    if boxed["method"] != "grabcut (no segmenter)":  # GrabCut found nothing in the random twin's box
        assert boxed["method"] == "detector box (no segmenter; GrabCut found nothing)"
        assert boxed["box"] == boxed["detection_box"] and boxed["area"] == (bx2 - bx1) * (by2 - by1)


async def test_bad_cut_out_arguments_are_errors_naming_the_field_and_store_nothing(settings, home):
    image = data_uri(photo("coffee", 48, 32))
    cases = [
        ({"object": "   "}, "object: an empty name"),
        ({"object": ""}, "object: an empty name"),
        ({"object": "a cup. a saucer"}, "object: 'a cup. a saucer' holds a '.'"),
        ({"object": "x" * 101}, "object: 101 characters is over the limit of 100"),
        ({"object": "cup", "threshold": 1.5}, "threshold: input should be less than or equal to 1"),
        ({"object": "cup", "threshold": -0.1}, "threshold: input should be greater than or equal to 0"),
        ({"threshold": 0.5}, "threshold: 0.5 is the detector's score threshold"),
        ({"instance": 1}, "instance: 1 picks among the matches of a named object"),
        ({"object": "cup", "instance": 25}, "instance: input should be less than or equal to 24"),
        ({"feather": -1}, "feather: input should be greater than or equal to 0"),
        ({"feather": 65}, "feather: input should be less than or equal to 64"),
        ({"object": "cup", "detector": "yolo"}, "detector: unknown model 'yolo'; models for detector: "),
        ({"segmenter": "tiny-owlv2-base"}, "segmenter: model 'tiny-owlv2-base' is a detector"),
        ({"object": "cup", "threshold": 1.0}, "object: no 'cup' above threshold 1 (the best candidate scored"),
        ({"image": "img_0123456789abcdef"}, "image: no stored image 'img_0123456789abcdef'"),
        ({"image": data_uri(photo("coffee", 6, 4))}, "image: 6x4 px is too small"),
    ]  # fmt: skip
    async with connect(settings) as client:
        for arguments, expected in cases:
            text = error_text(await client.call_tool("cut_out", {"image": image, **arguments}))
            assert expected in text, (arguments, text)
        assert stored(home) == []
        # an instance beyond the matches is known once the detector ran: still nothing stored
        found = await client.call_tool("cut_out", {"image": image, "object": "cup", "threshold": 0.0})
        matches = structured(found)["matches"]
        before = stored(home)
        assert 1 <= matches < 25
        text = error_text(
            await client.call_tool(
                "cut_out", {"image": image, "object": "cup", "threshold": 0.0, "instance": matches}
            )
        )
        assert f"instance: {matches} is beyond the {matches} match(es) of 'cup'" in text
        assert stored(home) == before
        assert structured(await client.call_tool("cut_out", {"image": image}))["status"] == "done"


@pytest.mark.slow
async def test_cut_out_over_stdio_sends_an_rgba_preview_and_stores_the_png(home, models_path):
    env = server_env(home, models_path)
    env["LIMNER_PROFILE"] = "real"  # no weights: GrabCut, so the subprocess never imports torch
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "server.cli", "serve"], env=env, cwd=str(REPO)
    )
    async with Client(params) as client:
        result = await client.call_tool("cut_out", {"image": data_uri(product_shot())})
    out = structured(result)
    assert out["method"] == "grabcut (no segmenter)"
    content = result.content[1]
    assert isinstance(content, ImageContent)
    preview = Image.open(io.BytesIO(base64.b64decode(content.data)))
    assert preview.mode == "RGBA" and np.asarray(preview)[..., 3].min() == 0
    assert Path(out["image"]["path"]).is_file() and os.path.dirname(out["image"]["path"]).startswith(
        str(home)
    )


@pytest.mark.slow
async def test_generate_foreground_finds_the_object_with_the_segmenter_when_one_is_configured(make_settings):
    photo_uri = data_uri(product_shot())
    args = {"prompt": "a cup on a table", "foreground": photo_uri, "width": 64, "height": 64, "steps": 1,
            "placement": [{"x": 0.5, "y": 0.5, "scale": 0.5}]}  # fmt: skip
    async with connect(make_settings(roles={"segmenter": "tiny-sam-vit-base"})) as client:
        out = structured(await client.call_tool("generate", args))
    info = out["foreground"]
    assert info["mask_source"] == "segmenter", info
    assert "tiny-sam-vit-base" in info["mask_reading"] and "predicted IoU" in info["mask_reading"]
    assert out["tiny"] and out["candidates"][0]["mask_id"]
    # the profile's stand-in twin is not a configured segmenter: GrabCut, as before
    async with connect(make_settings()) as client:
        out = structured(await client.call_tool("generate", args))
    assert out["foreground"]["mask_source"] == "grabcut"

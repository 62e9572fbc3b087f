"""locate (and judge's expect, which reads the same detector): named objects found by the detector twins (Grounding DINO, OWLv2) and masked by the SAM twin, on real
photographs, through the MCP client.

The twins have random weights, so these tests hold the plumbing and its invariants: boxes inside the image,
masks of the image's size stored with the image as their parent and usable by refine_region, scores in 0..1
above the threshold, progress, the answer when nothing passes, and the error texts. The box arithmetic is
checked directly: a known box through the conversion, and the twins' raw outputs against transformers' own
post-processing.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from skimage import data

from server.settings import Settings, load_settings
from tests.conftest import connect, error_text, structured
from tools.core.images import ImageStore, Resolved
from tools.core.jobs import Job
from tools.judge import checks as judge_checks
from tools.judge import expect
from tools.judge import request as judge_request
from tools.judge import verdict as judge_verdict
from tools.judge import work as judge_work
from tools.judge.expect import check_expect
from tools.judge.types import Expectation, JudgeRequest, ModelScores
from tools.locate.request import LocateWork, check_request
from tools.locate.result import finish
from tools.locate.work import work
from tools.models import detection
from tools.models.cache import ModelCache

pytestmark = pytest.mark.anyio

DETECTORS = ["tiny-grounding-dino-tiny", "tiny-owlv2-base"]


def photo(name: str, width: int, height: int) -> np.ndarray:
    pixels = getattr(data, name)()
    return cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)


def data_uri(pixels: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def stored(home: Path) -> list[str]:
    folder = home / "images"
    return sorted(p.name for p in folder.glob("*.png")) if folder.exists() else []


def read(home: Path, image_id: str) -> tuple[np.ndarray, dict]:
    path = home / "images" / f"{image_id}.png"
    meta = json.loads(path.with_suffix(".json").read_text())
    with Image.open(path) as img:
        return np.asarray(img), meta


@pytest.mark.parametrize("detector", DETECTORS)
async def test_locate_returns_boxes_inside_the_image_and_stored_masks_of_its_size(settings, home, detector):
    pixels = photo("coffee", 64, 43)  # not square: OWLv2 pads to a square, Grounding DINO does not
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with connect(settings) as client:
        result = await client.call_tool(
            "locate",
            {"image": data_uri(pixels), "objects": ["cup", "saucer"], "threshold": 0.0, "detector": detector},
            progress_callback=on_progress,
        )
    out = structured(result)
    assert out["status"] == "done" and out["tiny"] and detector in out["detector"]
    assert "tiny-sam-vit-base" in out["segmenter"] and (out["width"], out["height"]) == (64, 43)
    assert [c.type for c in result.content] == ["text", "image"]  # the overlay preview
    found = out["found"]
    assert [s["object"] for s in out["objects"]] == ["cup", "saucer"]
    assert sum(s["count"] for s in out["objects"]) == len(found) and 0 < len(found) <= 2 * 5
    image, image_meta = read(home, out["image_id"])
    assert np.array_equal(image, pixels) and image_meta["tool"] == "input"
    for name in ("cup", "saucer"):
        ranks = [f for f in found if f["object"] == name]
        assert [f["index"] for f in ranks] == list(range(len(ranks)))
        assert [f["score"] for f in ranks] == sorted((f["score"] for f in ranks), reverse=True)
    for f in found:
        x1, y1, x2, y2 = f["box"]
        assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 43, f["box"]
        assert 0.0 < f["score"] <= 1.0  # above threshold 0
        mask, meta = read(home, f["mask_id"])
        assert mask.shape == (43, 64) and set(np.unique(mask)) <= {0, 255}
        assert f["area"] == int((mask > 0).sum()) > 0
        assert f["area_fraction"] == round(f["area"] / (64 * 43), 5)
        ys, xs = np.nonzero(mask)
        assert f["centre"] == [round(xs.mean() + 0.5, 2), round(ys.mean() + 0.5, 2)]
        assert meta["tool"] == "locate" and meta["parents"] == [out["image_id"]]
        assert meta["box"] == f["box"] and meta["params"]["object"] in ("cup", "saucer")
        assert f["mask_source"] in ("segmenter", "box")
        if f["mask_source"] == "segmenter":
            assert 0.0 <= f["mask_score"] <= 1.0
    assert [p for p, _, _ in seen] == [1, 2, 3] and all(total == 3 and message for _, total, message in seen)


async def test_masks_box_gives_each_instance_its_box_as_the_mask_exactly(settings, home):
    pixels = photo("chelsea", 60, 40)
    async with connect(settings) as client:
        out = structured(
            await client.call_tool(
                "locate",
                {"image": data_uri(pixels), "objects": ["cat"], "threshold": 0.0, "masks": "box"},
            )
        )
    assert out["found"] and out["segmenter"] is None
    for f in out["found"]:
        x1, y1, x2, y2 = f["box"]
        expected = np.zeros((40, 60), dtype=bool)
        expected[y1:y2, x1:x2] = True
        mask, _ = read(home, f["mask_id"])
        assert np.array_equal(mask > 0, expected)
        assert f["area"] == (x2 - x1) * (y2 - y1) and f["mask_source"] == "box" and f["mask_score"] is None


async def test_a_mask_from_locate_refines_with_every_pixel_outside_the_blend_mask_unchanged(settings, home):
    pixels = photo("astronaut", 64, 64)
    async with connect(settings) as client:
        located = structured(
            await client.call_tool(
                "locate", {"image": data_uri(pixels), "objects": ["helmet"], "threshold": 0.0}
            )
        )
        smallest = min(
            located["found"], key=lambda f: f["area"]
        )  # random masks are large: leave room outside
        refined = structured(
            await client.call_tool(
                "refine_region",
                {
                    "image": located["image_id"],
                    "mask": smallest["mask_id"],
                    "prompt": "a white helmet",
                    "steps": 2,
                    "seed": 1,
                    "blend_dilate": 1,
                    "blend_blur": 1,
                },
            )
        )
    assert refined["input_id"] == located["image_id"]
    after, _ = read(home, refined["image"]["id"])
    blend, _ = read(home, refined["mask_id"])
    region, _ = read(home, refined["region_mask_id"])
    mask, _ = read(home, smallest["mask_id"])
    assert np.array_equal(region > 0, mask > 0)  # refine_region read locate's mask as it was stored
    outside = blend == 0
    assert outside.any() and np.array_equal(after[outside], pixels[outside])
    assert refined["metrics"]["changed_outside_blend"] == 0 and refined["metrics"]["mse_region"] > 0


async def test_nothing_above_the_threshold_is_an_answer_saying_how_close_the_best_miss_came(settings, home):
    async with connect(settings) as client:
        out = structured(
            await client.call_tool(
                "locate",
                {"image": data_uri(photo("coffee", 48, 32)), "objects": ["teapot"], "threshold": 1.0},
            )
        )
    assert out["status"] == "done" and out["found"] == []
    (summary,) = out["objects"]
    assert summary["object"] == "teapot" and summary["count"] == 0
    assert 0.0 <= summary["best_below"] <= 1.0
    assert "no 'teapot' above threshold 1" in out["message"] and "threshold below" in out["message"]
    assert stored(home) == [f"{out['image_id']}.png"]  # the searched image, for lineage; no mask


async def test_bad_locate_arguments_are_errors_naming_the_field_and_store_nothing(settings, home):
    image = data_uri(photo("coffee", 48, 32))
    cases = [
        ({"objects": []}, "objects: the list is empty"),
        ({"objects": ["cup", "  "]}, "objects[1]: an empty name"),
        ({"objects": [f"thing {i}" for i in range(11)]}, "objects: 11 names is over the limit of 10"),
        ({"objects": ["cup", "Cup"]}, "objects[1]: 'Cup' repeats objects[0]"),
        ({"objects": ["a cup. a saucer"]}, "objects[0]: 'a cup. a saucer' holds a '.'"),
        ({"objects": ["x" * 101]}, "objects[0]: 101 characters is over the limit of 100"),
        ({"objects": ["cup"], "threshold": 1.5}, "threshold: input should be less than or equal to 1"),
        ({"objects": ["cup"], "threshold": -0.1}, "threshold: input should be greater than or equal to 0"),
        ({"objects": ["cup"], "max_per_object": 0}, "max_per_object: input should be greater than or equal to 1"),
        ({"objects": ["cup"], "detector": "yolo"}, "detector: unknown model 'yolo'; models for detector: "),
        ({"objects": ["cup"], "detector": "tiny-sam-vit-base"}, "detector: model 'tiny-sam-vit-base' is a segmenter"),
        ({"objects": ["cup"], "masks": "box", "segmenter": "tiny-sam-vit-base"}, "segmenter: masks='box' uses no"),
        ({"objects": ["cup"], "image_id": "x"}, "unknown argument 'image_id' (did you mean 'image'?)"),
    ]  # fmt: skip
    async with connect(settings) as client:
        for arguments, expected in cases:
            text = error_text(await client.call_tool("locate", {"image": image, **arguments}))
            assert expected in text, (arguments, text)
        tiny = error_text(
            await client.call_tool("locate", {"image": data_uri(photo("coffee", 6, 4)), "objects": ["cup"]})
        )
        assert "image: 6x4 px is too small" in tiny
    assert stored(home) == []


async def test_without_a_detector_or_segmenter_locate_names_the_missing_role(home, models_path):
    def settings(**environ: str) -> Settings:
        flags = {"home": home, "profile": "real", "models_path": models_path, "max_wait_s": 600}
        return load_settings(flags=flags, environ=environ)

    image = data_uri(photo("coffee", 48, 32))
    async with connect(settings()) as client:
        text = error_text(await client.call_tool("locate", {"image": image, "objects": ["cup"]}))
    assert "detector role: locate needs a detector" in text and "grounding-dino-tiny" in text
    assert "hf download" in text
    async with connect(settings(LIMNER_DETECTOR_MODEL="tiny-owlv2-base")) as client:
        text = error_text(await client.call_tool("locate", {"image": image, "objects": ["cup"]}))
        assert "segmenter role" in text and "sam-vit-base" in text and "masks='box'" in text
        assert stored(home) == []
        out = structured(
            await client.call_tool(
                "locate", {"image": image, "objects": ["cup"], "threshold": 0, "masks": "box"}
            )
        )
    assert out["found"] and "tiny-owlv2-base" in out["detector"]


# -- the box arithmetic -----------------------------------------------------------------------------------------
def test_a_known_box_maps_to_its_pixel_edges_in_the_image_and_in_a_padded_square():
    # the image's own frame (Grounding DINO): centre (50, 25), 50 x 25 px in a 100 x 50 image
    exact, edges = detection.pixel_boxes(np.array([[0.5, 0.5, 0.5, 0.5]]), 100, 50, 100, 50)
    assert np.allclose(exact, [[25, 12.5, 75, 37.5]]) and edges.tolist() == [[25, 12, 75, 38]]
    # OWLv2's padded square (100 x 100 for the same image): the box's y is a fraction of 100, not of 50,
    # and a box in the padding below the image is cut to nothing
    exact, edges = detection.pixel_boxes(
        np.array([[0.5, 0.25, 0.5, 0.5], [0.5, 0.8, 0.2, 0.2]]), 100, 100, 100, 50
    )
    assert np.allclose(exact[0], [25, 0, 75, 50]) and edges[0].tolist() == [25, 0, 75, 50]
    assert exact[1, 3] - exact[1, 1] == 0  # y 70..90 lies in the padding: zero height inside the image
    assert detection.nms(
        np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30.0]]), np.array([0.5, 0.9, 0.1])
    ) == [1, 2]


@pytest.mark.parametrize("detector", DETECTORS)
def test_detect_boxes_are_transformers_own_post_processed_boxes_in_pixels(settings, detector):
    import torch

    models = ModelCache(settings.models, settings.roles, settings.profile, settings.models_dir)
    loaded = models.get("detector", detector)
    model, processor = loaded.model
    image = Image.fromarray(photo("chelsea", 64, 40))
    found = detection.detect(loaded, image, ["cat"], threshold=0.0, max_per_name=25)
    assert found.found
    with torch.inference_mode():
        if detector == "tiny-grounding-dino-tiny":
            inputs = processor(images=image, text="cat.", return_tensors="pt")
            outputs = model(**inputs)
            theirs = processor.post_process_grounded_object_detection(
                outputs, inputs["input_ids"], threshold=0.0, text_threshold=0.0, target_sizes=[(40, 64)]
            )[0]
        else:
            inputs = processor(images=image, text=["cat"], return_tensors="pt")
            outputs = model(**inputs)
            theirs = processor.image_processor.post_process_object_detection(
                outputs, threshold=0.0, target_sizes=[(40, 64)]
            )[0]
    boxes = np.clip(theirs["boxes"].numpy(), 0, [64, 40, 64, 40])
    for d in found.found:
        matches = np.flatnonzero(np.abs(boxes - np.array(d.exact)).max(axis=1) < 1e-3)
        assert matches.size, f"{d.exact} is none of transformers' boxes"
        x1, y1, x2, y2 = d.box
        assert (x1, y1) == (int(np.floor(d.exact[0])), int(np.floor(d.exact[1])))
        assert (x2, y2) == (int(np.ceil(d.exact[2])), int(np.ceil(d.exact[3])))
        if detector == "tiny-owlv2-base":  # one text query: its score is the box's score
            assert any(abs(float(theirs["scores"][i]) - d.score) < 1e-4 for i in matches)


def test_locate_work_pickles_and_its_output_finishes_into_the_same_stored_ids(settings, tmp_path):
    models = ModelCache(settings.models, settings.roles, settings.profile, settings.models_dir)
    request = check_request(
        objects=["cat", "ear"],
        threshold=0.0,
        max_per_object=3,
        detector=None,
        segmenter=None,
        masks="segmenter",
        models=models,
    )
    given = LocateWork(request, Resolved(Image.fromarray(photo("chelsea", 48, 32)), None, "data"))
    sent = pickle.loads(pickle.dumps(given))
    output = work(sent, models, Job(id="job_1", tool="locate", description="pickle round trip"))
    returned = pickle.loads(pickle.dumps(output))
    local, _ = finish(given, output, ImageStore(tmp_path / "here"))
    remote, _ = finish(sent, returned, ImageStore(tmp_path / "there"))
    assert local.found and [f.mask_id for f in local.found] == [f.mask_id for f in remote.found]
    assert local.model_dump(exclude={"timings"}) == remote.model_dump(exclude={"timings"})


# -- judge's expect: GenEval's rules on what the detector saw ----------------------------------------------------
RED, BLUE, BACKGROUND = (220, 30, 30), (30, 30, 220), (235, 235, 235)


def scene(
    square: tuple[int, int, int], circle: tuple[int, int, int], squares_left: bool, squares: int = 2
) -> np.ndarray:
    """64 x 64: `squares` squares of one colour stacked on one side, a circle of another on the other."""
    pixels = np.full((64, 64, 3), BACKGROUND, np.uint8)
    x = 6 if squares_left else 44
    for k in range(squares):
        y = 4 + k * (56 // squares)
        cv2.rectangle(pixels, (x, y), (x + 13, y + 13), square, -1)
    cv2.circle(pixels, (52 if squares_left else 12, 32), 9, circle, -1)
    return pixels


def fake_detector(pixels: np.ndarray, names: tuple[str, ...]) -> dict[str, list[expect.Seen]]:
    """A stand-in for the detector, segmenter and CLIP with their output (what judge's work hands the rules):
    each blob of one colour is an object, a 'square' when it fills its box, a 'circle' when it fills about
    pi/4 of it, with its exact mask, and the colour probabilities of a perfect zero-shot classifier."""
    seen: dict[str, list[expect.Seen]] = {name: [] for name in names}
    for colour, colour_name in ((RED, "red"), (BLUE, "blue")):
        blobs = np.all(pixels == colour, axis=2).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(blobs)
        for k in range(1, count):
            x, y, w, h, area = stats[k]
            kind = "square" if area > 0.9 * w * h else "circle"
            if kind in seen:
                colours = {c: float(c == colour_name) for c in expect.COLOURS}
                seen[kind].append(
                    expect.Seen(0.95, (int(x), int(y), int(x + w), int(y + h)), labels == k, colours)
                )
    return seen


EXPECTED = [
    {"object": "square", "count": 2},
    {"object": "square", "color": "red"},
    {"object": "circle", "color": "blue"},
    {"object": "square", "position": "left of", "of": "circle"},
    {"object": "dog", "present": False},
]


def expect_request(
    pixels: np.ndarray, image_id: str | None, prompt: str | None, entries: list[dict]
) -> JudgeRequest:
    """judge's request for one image (stored, or passed as data without an id) with `entries` as its
    expectations (the quality checks only)."""
    return judge_request.check_request(
        images=[Resolved(Image.fromarray(pixels), image_id, "store" if image_id else "data")],
        prompt=prompt,
        questions=None,
        reference=None,
        original=None,
        mask=None,
        foreground_mask=None,
        checks=["quality"],
        min_alignment=20.0,
        max_questions=8,
        max_prompt_chars=2000,
        expect=[Expectation(**e) for e in entries],
    )


def test_expect_passes_two_red_squares_left_of_a_blue_circle_and_fails_them_swapped():
    entries = check_expect([Expectation(**e) for e in EXPECTED])
    as_asked = fake_detector(scene(RED, BLUE, squares_left=True), expect.names(entries))
    assert [expect.evaluate(e, as_asked).passed for e in entries] == [True] * 5
    swapped = fake_detector(scene(BLUE, RED, squares_left=False), expect.names(entries))
    outcomes = [expect.evaluate(e, swapped) for e in entries]
    assert [o.passed for o in outcomes] == [True, False, False, False, True]
    assert "CLIP reads blue" in outcomes[1].detail and len(outcomes[1].wrong) == 1  # the best square only
    assert outcomes[3].relations == ["right of"] and "it is right of it" in outcomes[3].detail
    three = fake_detector(scene(RED, BLUE, squares_left=True, squares=3), expect.names(entries))
    counted = expect.evaluate(entries[0], three)
    assert (
        not counted.passed and counted.found == 3 and "expected exactly 2 square, found 3" in counted.detail
    )
    absent = expect.evaluate(check_expect([Expectation(object="circle", present=False)])[0], as_asked)
    assert not absent.passed and absent.wrong == as_asked["circle"]


def test_failed_expectations_become_items_whose_next_steps_carry_the_stored_mask_or_a_stated_prompt(tmp_path):
    store = ImageStore(tmp_path / "images")
    pixels = scene(BLUE, RED, squares_left=False)
    image_id = store.put(Image.fromarray(pixels), tool="input").id
    request = expect_request(pixels, image_id, "two red squares left of a blue circle", EXPECTED)
    seen = fake_detector(pixels, expect.names(request.expect))
    scores = ModelScores([None], [None], [None], {}, False, [], {}, None, [seen])
    result = judge_verdict.finish(request, judge_checks.model_free(request), scores, store, {})
    (judgement,) = result.judgements
    assert judgement.verdict == "fix" and [r.passed for r in judgement.expectations or []] == [
        True,
        False,
        False,
        False,
        True,
    ]
    items = {item.check: item for item in judgement.items}
    colour = items["expect[1]"].next_step
    assert colour is not None and colour.action == "refine_region" and colour.image == image_id
    assert colour.prompt == "a red square" and colour.mask is not None
    mask, meta = read(tmp_path, colour.mask)
    assert np.array_equal(mask > 0, seen["square"][0].mask) and meta["parents"] == [image_id]
    position = items["expect[3]"].next_step
    assert position is not None and position.action == "regenerate"
    assert position.prompt == "a square left of a circle; two red squares left of a blue circle"
    assert items["expect[0]"].passed and items["expect[4]"].passed


def test_a_crowd_is_found_whole_but_listed_as_its_best_few_with_masks_only_for_those_listed(tmp_path):
    pixels = np.full((64, 64, 3), BACKGROUND, np.uint8)
    for k in range(8):  # eight red squares, 8 px each, in two rows
        x, y = 4 + (k % 4) * 15, 8 + (k // 4) * 30
        cv2.rectangle(pixels, (x, y), (x + 7, y + 7), RED, -1)
    two, none = check_expect(
        [Expectation(object="square", count=2), Expectation(object="square", present=False)]
    )
    seen = fake_detector(pixels, expect.names([two, none]))
    assert len(seen["square"]) == 8
    counted = expect.evaluate(two, seen)
    assert not counted.passed and counted.found == 8 and "found 8" in counted.detail
    assert counted.read == seen["square"][: 2 + expect.LISTED_BEYOND]  # the two counted and the next best
    absent = expect.evaluate(none, seen)
    assert (
        absent.found == 8 and absent.wrong == seen["square"] and len(absent.read) == 1 + expect.LISTED_BEYOND
    )

    store = ImageStore(tmp_path / "images")
    image_id = store.put(Image.fromarray(pixels), tool="input").id
    request = expect_request(pixels, image_id, "no squares", [none.model_dump()])
    scores = ModelScores([None], [None], [None], {}, False, [], {}, None, [seen])
    result = judge_verdict.finish(request, judge_checks.model_free(request), scores, store, {})
    (listed,) = result.judgements[0].expectations or []
    assert listed.found == 8 and len(listed.instances) == 3
    assert all(i.mask_id is not None for i in listed.instances)  # each listed one can be refined away
    step = next(it for it in result.judgements[0].items if it.check == "expect[0]").next_step
    assert (
        step is not None
        and step.mask == listed.instances[0].mask_id
        and "8 instances: one call each, best first; the best 3 are listed with masks" in step.why
    )
    ids = [name.removesuffix(".png") for name in stored(tmp_path)]
    masks = [m for m in ids if read(tmp_path, m)[1]["params"].get("mask") == "expect instance"]
    assert len(masks) == 3 and "verdict" in result.timings


def test_relative_position_reads_box_centres_with_a_margin_that_grows_with_the_objects():
    assert expect.relations((0, 0, 10, 10), (30, 0, 40, 10)) == {"left of"}
    assert expect.relations((0, 30, 10, 40), (0, 0, 10, 10)) == {"below"}
    assert expect.relations((0, 0, 10, 10), (30, 30, 40, 40)) == {"left of", "above"}  # diagonal: both
    # centres 3 px apart: within 0.1 x (10 + 10) = 2 px of margin on x and the same row: no side
    assert expect.relations((0, 0, 10, 10), (1, 0, 11, 10)) == set()
    assert expect.relations((0, 0, 10, 10), (0, 0, 10, 10)) == set()


async def test_judge_expect_end_to_end_on_the_twins_gives_each_entry_a_verdict_with_its_evidence(
    settings, home
):
    pixels = scene(RED, BLUE, squares_left=True)
    async with connect(settings) as client:
        out = structured(await client.call_tool("judge", {"image": data_uri(pixels), "expect": EXPECTED}))
    (judgement,) = out["judgements"]
    results = judgement["expectations"]
    assert [r["expect"]["object"] for r in results] == ["square", "square", "circle", "square", "dog"]
    assert {"detector", "segmenter", "clip"} <= set(out["models"]) and out["tiny"]
    items = {item["check"]: item for item in judgement["items"]}
    for k, r in enumerate(results):
        assert r["threshold"] == (0.9 if k == 0 else 0.3) and items[f"expect[{k}]"]["passed"] == r["passed"]
        if not r["passed"]:
            assert items[f"expect[{k}]"]["next_step"]["action"] in ("refine_region", "regenerate")
        for instance in r["instances"]:
            x1, y1, x2, y2 = instance["box"]
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 64 and 0 <= instance["score"] <= 1
            if instance["mask_id"] is not None:
                mask, meta = read(home, instance["mask_id"])
                assert mask.shape == (64, 64) and meta["tool"] == "judge"
    colour = results[1]["instances"]
    assert colour and all(0 <= p <= 1 for i in colour for p in (i["color_scores"] or {}).values())
    assert all(i["color"] in expect.COLOURS for i in colour)
    assert judgement["verdict"] == ("pass" if all(i["passed"] for i in judgement["items"]) else "fix")


async def test_bad_expect_entries_are_errors_naming_the_entry(settings, home, models_path):
    image = data_uri(scene(RED, BLUE, squares_left=True))
    cases = [
        ([{"object": "apple", "colour": "red"}], "expect[0].colour: extra inputs are not permitted"),
        ([{"object": "cup", "position": "next to", "of": "apple"}], "expect[0].position: input should be 'left of'"),
        ([{"object": "apple", "count": -1}], "expect[0].count: input should be greater than or equal to 0"),
        ([{"object": "cup", "position": "above"}], "expect[0]: position and of go together"),
        ([{"object": "dog", "present": False, "color": "red"}], "expect[0]: it says the dog must not be there"),
        ([{"object": "apple"}, {"object": "cup", "position": "left of", "of": "cup"}], "expect[1].of: 'cup' must name another"),
        ([], "expect: the list is empty"),
    ]  # fmt: skip
    async with connect(settings) as client:
        for entries, expected in cases:
            text = error_text(await client.call_tool("judge", {"image": image, "expect": entries}))
            assert expected in text, (entries, text)
    real = load_settings(flags={"home": home, "profile": "real", "models_path": models_path}, environ={})
    async with connect(real) as client:
        text = error_text(await client.call_tool("judge", {"image": image, "expect": [{"object": "apple"}]}))
    assert "expect: needs the detector role" in text and "grounding-dino-tiny" in text
    assert stored(home) == []


def test_judge_expect_work_pickles_and_finishes_into_the_same_verdicts_and_mask_ids(settings, tmp_path):
    models = ModelCache(settings.models, settings.roles, settings.profile, settings.models_dir)
    pixels = scene(RED, BLUE, squares_left=True)
    request = expect_request(pixels, None, None, EXPECTED)
    given = judge_work.plan(request, None)
    assert given is not None  # expect alone needs the models
    sent = pickle.loads(pickle.dumps(given))
    scores = judge_work.work(sent, models, Job(id="job_1", tool="judge", description="pickle round trip"))
    returned = pickle.loads(pickle.dumps(scores))
    found = judge_checks.model_free(request)
    local = judge_verdict.finish(request, found, scores, ImageStore(tmp_path / "here"), {})
    remote = judge_verdict.finish(sent.request, found, returned, ImageStore(tmp_path / "there"), {})
    assert local.judgements[0].expectations and "detector" in local.models
    assert local.model_dump(exclude={"timings"}) == remote.model_dump(exclude={"timings"})

"""judge's model-free metrics and verdict rules as plain functions, on scikit-image photographs."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image
from scipy.stats import spearmanr
from skimage import data
from skimage.metrics import structural_similarity

from tools.core.images import ImageStore, Resolved
from tools.judge.checks import model_free
from tools.judge.request import check_request, split_prompt
from tools.judge.types import ModelScores, QuestionScore
from tools.judge.verdict import finish
from tools.metrics.preservation import ssim_map
from tools.metrics.quality import grey, noise_sigma, quality

PHOTOS = ("astronaut", "coffee", "chelsea")


def photo(name: str, side: int = 256) -> np.ndarray:
    pixels = getattr(data, name)()
    h, w = pixels.shape[:2]
    scale = side / max(h, w)
    return cv2.resize(pixels, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)


def blur(pixels: np.ndarray, sigma: float) -> np.ndarray:
    return pixels if sigma == 0 else cv2.GaussianBlur(pixels, (0, 0), sigma)


def noise(pixels: np.ndarray, sigma: float) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.clip(pixels + rng.normal(0, sigma, pixels.shape), 0, 255).astype(np.uint8)


def jpeg(pixels: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=q)
    return np.asarray(Image.open(buf).convert("RGB"))


def exposure(pixels: np.ndarray, stops: float) -> np.ndarray:
    return np.clip(pixels.astype(np.float32) * 2.0**stops, 0, 255).astype(np.uint8)


DEGRADATIONS = {
    "blur": (blur, [0, 0.5, 1, 2, 3, 4], "sharpness"),
    "noise": (noise, [0, 5, 10, 20, 30, 40], "noise"),
    "jpeg": (jpeg, [95, 75, 50, 30, 15, 5], "blockiness"),
    "overexposure": (exposure, [0, 0.5, 1, 1.5, 2, 2.5], "overexposure"),
    "underexposure": (exposure, [0, -0.5, -1, -1.5, -2, -2.5], "underexposure"),
}


@pytest.mark.parametrize("degradation", DEGRADATIONS)
def test_each_quality_score_falls_monotonically_as_its_degradation_grows(degradation):
    make, levels, metric = DEGRADATIONS[degradation]
    for name in PHOTOS:
        pixels = photo(name)
        scores = [getattr(quality(make(pixels, level)), metric).score for level in levels]
        rho = spearmanr(range(len(levels)), scores).statistic
        assert rho <= -0.95, (name, degradation, scores)


def test_ssim_map_matches_scikit_image_structural_similarity():
    a = grey(photo("astronaut"))
    b = grey(noise(photo("astronaut"), 15))
    expected = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    pad = 5  # scikit-image leaves out the border the window does not cover
    assert float(ssim_map(a, b)[pad:-pad, pad:-pad].mean()) == pytest.approx(expected, abs=1e-4)


def test_a_clean_photograph_passes_every_quality_check():
    for name in PHOTOS:
        q = quality(photo(name))
        assert all(
            getattr(q, m).passed
            for m in ("sharpness", "underexposure", "overexposure", "noise", "blockiness")
        )


def test_flat_graphics_and_pixel_doubled_photographs_are_no_jpeg_grid():
    box = np.full((256, 256, 3), 240, np.uint8)
    box[64:192, 16:48] = (200, 30, 30)  # both vertical edges fall on the same 8-px phase
    moon = np.stack([data.moon()] * 3, axis=-1)  # scikit-image's own 2x nearest-upscaled photograph
    doubled = [
        cv2.resize(photo(n), None, fx=k, fy=k, interpolation=cv2.INTER_NEAREST)
        for n in PHOTOS
        for k in (2, 4)
    ]
    for pixels in (box, np.full((64, 64, 3), 128, np.uint8), moon, *doubled):
        blockiness = quality(pixels).blockiness
        assert blockiness.raw < 1.1 and blockiness.passed, blockiness
    for name in PHOTOS:  # while a real grid still fails
        assert not quality(jpeg(photo(name, 512), 10)).blockiness.passed


def _request(tmp_path, questions):
    image = Image.fromarray(photo("coffee", 128))
    return check_request(
        images=[Resolved(image, None, "data")],
        prompt="a cup of coffee, a spoon and a saucer",
        questions=questions,
        reference=None,
        original=None,
        mask=None,
        foreground_mask=None,
        checks=["checklist", "quality"],
        min_alignment=20.0,
        max_questions=12,
        max_prompt_chars=2000,
    ), ImageStore(tmp_path / "images")


def _scores(answers: list[QuestionScore]) -> ModelScores:
    return ModelScores([None], [None], [answers], {"vlm": "test"}, False, [], {})


def test_one_failing_question_comes_first_with_a_refine_region_step_on_its_box(tmp_path):
    request, store = _request(tmp_path, ["a cup", "a spoon", "a saucer"])
    answers = [
        QuestionScore(question="a cup", p_yes=0.9, p_yes_raw=0.9, passed=True),
        QuestionScore(question="a spoon", p_yes=0.2, p_yes_raw=0.2, passed=False, where=[0, 32, 64, 96]),
        QuestionScore(question="a saucer", p_yes=0.7, p_yes_raw=0.7, passed=True),
    ]
    result = finish(request, model_free(request), _scores(answers), store, {})
    judgement = result.judgements[0]
    assert judgement.verdict == "fix"
    first = judgement.items[0]
    assert first.check == "checklist" and not first.passed and "a spoon" in first.detail
    assert first.next_step.action == "refine_region" and first.next_step.bbox == [0, 32, 64, 96]
    assert first.next_step.prompt == "a spoon"
    assert all(item.passed for item in judgement.items[1:])


def test_a_failing_question_on_a_refined_image_judged_with_its_mask_points_at_its_region_mask(tmp_path):
    """With a mask, a question's box is the mask's: for an edit limner made that is the blend mask, whose
    box grows by the feathered rim on every round; its region mask does not."""
    request, store = _request(tmp_path, ["a cup", "a spoon", "a saucer"])
    image = request.images[0].image
    region = store.put(Image.new("L", image.size, 0), tool="mask", params={"mask": "region"}).id
    source = store.put(Image.new("RGB", image.size, "white"), tool="input")
    made = store.put(image, tool="refine_region", params={"prompt": "a spoon"}, parents=[source.id],
                     info={"region_mask_id": region, "mask_id": region})  # fmt: skip
    request.images = [Resolved(image, made.id, "store")]
    request.mask = np.ones(image.size[::-1], bool)
    answers = [
        QuestionScore(question="a cup", p_yes=0.9, p_yes_raw=0.9, passed=True),
        QuestionScore(question="a spoon", p_yes=0.2, p_yes_raw=0.2, passed=False, where=[0, 0, 128, 96]),
        QuestionScore(question="a saucer", p_yes=0.7, p_yes_raw=0.7, passed=True),
    ]
    step = finish(request, [{}], _scores(answers), store, {}).judgements[0].items[0].next_step
    assert (step.action, step.image, step.mask, step.bbox) == ("refine_region", made.id, region, None)


def test_most_questions_failing_asks_to_regenerate_with_the_missing_elements_first(tmp_path):
    request, store = _request(tmp_path, ["a cup", "a spoon", "a saucer"])
    answers = [
        QuestionScore(question="a cup", p_yes=0.9, p_yes_raw=0.9, passed=True),
        QuestionScore(question="a spoon", p_yes=0.1, p_yes_raw=0.1, passed=False),
        QuestionScore(question="a saucer", p_yes=0.3, p_yes_raw=0.3, passed=False),
    ]
    result = finish(request, model_free(request), _scores(answers), store, {})
    steps = [item.next_step for item in result.judgements[0].items[:2]]
    assert all(s.action == "regenerate" for s in steps)
    assert steps[0].prompt == "a spoon, a saucer; a cup of coffee, a spoon and a saucer"


def test_the_prompt_split_rule():
    assert split_prompt("a red apple, a blue cup and a table with a vase.") == [
        "a red apple",
        "a blue cup",
        "a table",
        "a vase",
    ]
    assert split_prompt("a lighthouse at dusk") == ["a lighthouse at dusk"]
    assert split_prompt("a cat, A cat; and") == ["a cat, A cat; and"]


def test_a_failed_question_is_localised_on_the_grid_crop_the_tiny_clip_matches_best(settings):
    from tools.judge.work import clip_embed_images, clip_embed_texts, grid_boxes, localise
    from tools.models.cache import ModelCache

    clip = ModelCache(settings.models, settings.roles, settings.profile, settings.models_dir).get("clip")
    image = Image.fromarray(photo("astronaut", 128))
    questions = ["a flag", "a helmet"]
    found = localise(clip, image, questions)
    boxes = grid_boxes(128, 128)
    assert boxes[0] == [0, 0, 64, 64] and boxes[-1] == [64, 64, 128, 128] and len(boxes) == 9
    crops = clip_embed_images(clip, [image.crop(tuple(b)) for b in boxes])
    for question in questions:
        text = clip_embed_texts(clip, [question])[0][0]
        assert found[question] == boxes[int((crops @ text).argmax())]
    for size in ((1, 40), (40, 1), (1, 1), (3, 2)):  # images a pixel thin still localise, on real crops
        thin = image.resize(size)
        assert all(
            x1 > x0 and y1 > y0 and x1 <= size[0] and y1 <= size[1] for x0, y0, x1, y1 in grid_boxes(*size)
        )
        assert set(localise(clip, thin, questions)) == set(questions)


def test_over_extension_of_a_thin_object_in_a_large_image_is_measured_as_at_full_resolution():
    from tools.metrics import preservation as pres

    side = 1600  # the band's crop is far above BAND_WORK_SIDE: the analysis runs on a smaller copy
    scene = cv2.resize(data.coffee(), (side, side), interpolation=cv2.INTER_CUBIC)
    for width in (3, 6, 40):  # poles 3, 6 and 40 px wide
        fg = np.zeros((side, side), bool)
        fg[50:-50, 800 : 800 + width] = True
        clean = scene.copy()
        clean[fg] = (20, 200, 20)
        spilled = clean.copy()
        spilled[50:-50, 775 : 825 + width] = (20, 200, 20)  # painted 25 px past the object on both sides
        assert pres.foreground_integrity(clean, fg, None).over_extension <= pres.OVER_EXTENSION_LIMIT
        found = pres.foreground_integrity(spilled, fg, None).over_extension
        full = pres.foreground_integrity(spilled, fg, None, work_side=10**6).over_extension
        assert found > 0.5 and abs(found - full) < 0.08, (width, found, full)


def test_preservation_computed_around_the_changes_equals_the_whole_image_computation():
    from tools.metrics.preservation import preservation

    original = photo("chelsea", 300)
    h, w = original.shape[:2]
    mask = np.zeros((h, w), bool)
    mask[60:160, 90:220] = True
    image = original.copy()
    image[mask] = noise(original, 25)[mask]
    image[5:9, 3:12] = 0  # a leak outside, by the image border
    image[150:152, 250:253] += 7  # and one inside the picture
    result = preservation(image, original, mask)
    for region, stats in ((~mask, result.outside), (mask, result.inside)):
        seen = np.where(region[..., None], image, original)  # only this region's changes
        full = ssim_map(grey(seen), grey(original))
        sq = (seen.astype(np.float64) - original) ** 2
        assert stats.ssim == pytest.approx(float(full[region].mean()), abs=2e-5)
        assert stats.mse == pytest.approx(float(sq[region].mean()), abs=1e-3)
        assert stats.changed_pixels == int(((seen != original).any(axis=2) & region).sum())
    assert result.changed_outside_box == [3, 5, 253, 152] and not result.passed


def test_noise_is_measured_on_a_strip_as_on_a_square():
    """A strip 1 or 2 px high used to measure no noise at all (sigma 0, a perfect score) and rank above the
    same noise as a square; along its length the estimator agrees with the square's."""
    rng = np.random.default_rng(0)
    for sd in (5, 20):
        square = np.clip(128 + rng.normal(0, sd, (100, 100)), 0, 255).astype(np.uint8)
        strip = np.clip(128 + rng.normal(0, sd, (2, 5000)), 0, 255).astype(np.uint8)
        assert noise_sigma(strip) == pytest.approx(noise_sigma(square), rel=0.1)
        assert noise_sigma(strip.T.copy()) == noise_sigma(strip)
    noisy = rng.integers(0, 256, (1, 10000, 3)).astype(np.uint8)
    assert not quality(noisy).noise.passed
    assert noise_sigma(np.full((2, 2), 9, np.uint8)) == 0.0

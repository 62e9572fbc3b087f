"""judge's model checks, run on the model worker: CLIPScore alignment and the VQAScore checklist.

- alignment: CLIPScore = 100 * max(cos(image, text), 0) with the `clip` role's model (Hessel et al. 2021,
  w = 100, as torchmetrics computes it); prompts over the text encoder's token limit are truncated (the
  result warns).
- checklist: VQAScore (Lin et al. 2024): the `vlm` role's model reads `Does this figure show "{question}"?
  Please answer yes or no.` through its own chat template; P(yes) comes from the next-token logits.
- where: a failed question is localised on the 3x3 grid crop (half the image each) CLIP matches best.
- lpips: LPIPS against the original, inside and outside the mask (tools/models/perceptual.py), when the `lpips`
  role's weights are present; judge_tools asks for it only then.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.core.jobs import Progress
from tools.judge import expect
from tools.judge.types import QUESTION_PASS, Alignment, JudgeRequest, ModelScores, QuestionScore
from tools.models import detection, perceptual
from tools.models.cache import Loaded, ModelCache

VQA_TEMPLATE = 'Does this figure show "{question}"? Please answer yes or no.'
YES_WORDS, NO_WORDS = ("yes", "Yes", "YES"), ("no", "No", "NO")


def _features(output: Any) -> Any:
    """transformers 5 returns an output object from get_*_features; older versions a tensor."""
    return getattr(output, "pooler_output", output)


def clip_text_limit(processor: Any, model: Any) -> int:
    limit = getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None) or 77
    return min(limit, getattr(processor.tokenizer, "model_max_length", limit) or limit)


def clip_embed_texts(loaded: Loaded, texts: list[str]) -> tuple[Any, list[int]]:
    """Unit text embeddings, truncated to the model's token limit; also each text's full token count."""
    import torch

    model, processor = loaded.model
    limit = clip_text_limit(processor, model)
    counts = [len(ids) for ids in processor.tokenizer(texts)["input_ids"]]
    padding = "max_length" if "siglip" in model.config.model_type else True
    tokens = processor(text=texts, return_tensors="pt", padding=padding, truncation=True, max_length=limit)
    tokens = {k: v.to(loaded.device) for k, v in tokens.items()}
    with torch.inference_mode():
        feats = _features(model.get_text_features(**tokens)).float()
    return torch.nn.functional.normalize(feats, dim=-1), counts


def clip_embed_images(loaded: Loaded, images: list[Image.Image]) -> Any:
    import torch

    model, processor = loaded.model
    pixels = processor(images=[img.convert("RGB") for img in images], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        feats = _features(
            model.get_image_features(pixel_values=pixels.to(loaded.device, model.dtype))
        ).float()
    return torch.nn.functional.normalize(feats, dim=-1)


def clipscore(image_feats: Any, text_feats: Any) -> list[float]:
    """CLIPScore per row: 100 * max(cos, 0) (Hessel et al. 2021 with w = 100, as torchmetrics)."""
    cos = (image_feats * text_feats).sum(dim=-1)
    return [round(100 * max(float(c), 0.0), 4) for c in cos]


def answer_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The single-token spellings of yes and no in this tokenizer, bare ("Yes", what follows a template's
    "assistant\n") and after a space (" Yes", what follows "ASSISTANT:"; byte-level BPEs such as Qwen's write it
    as one token "ĠYes"); a spelling this tokenizer splits into several tokens is not an answer token."""

    def single(words: tuple[str, ...]) -> list[int]:
        ids = [tokenizer.encode(s + w, add_special_tokens=False) for w in words for s in ("", " ")]
        return sorted({t[0] for t in ids if len(t) == 1})

    yes, no = single(YES_WORDS), single(NO_WORDS)
    if not yes or not no:
        raise ToolError("the vlm model's tokenizer has no single token for yes/no; choose another vlm model.")
    return yes, no


def vqa_p_yes(
    loaded: Loaded, image: Image.Image, question: str, yes: list[int], no: list[int]
) -> tuple[float, float]:
    """(P(yes | yes or no), P(yes)) for one question, from the next-token logits after the chat prompt."""
    import torch

    model, processor = loaded.model
    messages = [
        {
            "role": "user",
            "content": [{"type": "image"}, {"type": "text", "text": VQA_TEMPLATE.format(question=question)}],
        }
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[text], images=[image.convert("RGB")], return_tensors="pt").to(loaded.device)
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    # the next token's logits only: a real VLM's vocabulary (150k) times every position would be gigabytes
    with torch.inference_mode():
        logits = model(**inputs, logits_to_keep=1).logits[0, -1].float()
    probs = torch.softmax(logits, dim=-1)
    p_yes, p_no = float(probs[yes].sum()), float(probs[no].sum())
    return p_yes / max(p_yes + p_no, 1e-12), p_yes


def _size_field(size: Any, name: str) -> int | None:
    """A field of an image processor's `size` (a dict, or transformers 5's SizeDict)."""
    value = size.get(name) if isinstance(size, dict) else getattr(size, name, None)
    return int(value) if value else None


def pixel_budget(image_processor: Any) -> int | None:
    """The most pixels a Qwen-VL image processor resizes an image to (its max_pixels); None for processors that
    resize to a side. Qwen-VL's keep the aspect ratio within [min_pixels, max_pixels], which transformers 5
    stores as size shortest_edge / longest_edge: pixel counts, not sides."""
    if "image_grid_thw" not in (getattr(image_processor, "model_input_names", None) or ()):
        return None
    budget = getattr(image_processor, "max_pixels", None)  # transformers 4 kept it as its own attribute
    return int(budget) if budget else _size_field(getattr(image_processor, "size", None), "longest_edge")


def vlm_working_copy(image: Image.Image, processor: Any) -> Image.Image:
    """The image shrunk once to twice the processor's target, so the processor (run once per question) does
    not resize a large image again and again; the processor still does its own final resize. The target is a
    short side, or for Qwen-VL's pixel budget an area: shrunk to 4 x max_pixels (twice each side), aspect kept."""
    image_processor = getattr(processor, "image_processor", None)
    image = image.convert("RGB")
    budget = pixel_budget(image_processor)
    if budget is not None:
        if image.width * image.height <= 4 * budget:
            return image
        scale = (4 * budget / (image.width * image.height)) ** 0.5
    else:
        edge = _size_field(getattr(image_processor, "size", None), "shortest_edge")
        if not edge or min(image.size) <= 2 * edge:
            return image
        scale = 2 * edge / min(image.size)
    return image.resize(
        (max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.Resampling.LANCZOS
    )


def grid_boxes(width: int, height: int) -> list[list[int]]:
    """3x3 overlapping crops of half the image each (stride a quarter): where a question is localised."""
    boxes = []
    side_x, side_y = max(1, width // 2), max(1, height // 2)  # a 1-px image still gets non-empty crops
    for gy in range(3):
        for gx in range(3):
            x0, y0 = gx * width // 4, gy * height // 4
            boxes.append([x0, y0, x0 + side_x, y0 + side_y])
    return boxes


def localise(clip: Loaded, image: Image.Image, questions: list[str]) -> dict[str, list[int]]:
    """For each question, the grid crop (see grid_boxes) whose CLIP embedding matches it best."""
    boxes = grid_boxes(*image.size)
    crops = clip_embed_images(clip, [image.crop((b[0], b[1], b[2], b[3])) for b in boxes])
    texts, _ = clip_embed_texts(clip, questions)
    best = (crops @ texts.T).argmax(dim=0)
    return {q: boxes[int(k)] for q, k in zip(questions, best, strict=True)}


def expect_evidence(
    models: ModelCache, image: Image.Image, expectations: tuple, clip: Loaded | None, warnings: list[str]
) -> tuple[dict[str, list[expect.Seen]], dict[str, Loaded]]:
    """What `expect` is decided from: every named object's instances (detector, above 0.3, best first), each
    masked by the segmenter (when one can be loaded) and, for objects with an expected colour, its colour by
    CLIP zero-shot over its masked crop (GenEval's rule, tools/judge/expect.py); and the models used, by role."""
    import torch

    names = expect.names(expectations)
    detector = models.get("detector")
    found = detection.detect(detector, image, names, expect.DETECT_THRESHOLD, expect.MAX_INSTANCES)
    used = {"detector": detector}
    warnings.extend(found.warnings)
    masks: list[np.ndarray | None] = [None] * len(found.found)
    if found.found:
        try:
            segmenter = models.get("segmenter")
        except ToolError as exc:  # counts and positions need boxes only: colour reads the whole box then
            warnings.append(f"expect: no segmenter, colours read over whole boxes: {exc}")
        else:
            used["segmenter"] = segmenter
            segments = detection.segment(segmenter, image, [d.exact for d in found.found])
            masks = [s.mask if s.mask.any() else None for s in segments]
    colours: list[dict[str, float] | None] = [None] * len(found.found)
    for name in sorted(expect.coloured(expectations)):  # one batch of crops and prompts per object
        index = [i for i, d in enumerate(found.found) if d.name == name]
        if not index:
            continue
        clip = clip or models.get("clip")
        used["clip"] = clip
        crops = [expect.masked_crop(image, found.found[i].box, masks[i]) for i in index]
        texts, _ = clip_embed_texts(clip, expect.colour_prompts(name))
        probs = torch.softmax(100 * clip_embed_images(clip, crops) @ texts.T, dim=-1)  # CLIP's logit scale
        for row, i in zip(probs, index, strict=True):
            colours[i] = {c: round(float(q), 4) for c, q in zip(expect.COLOURS, row, strict=True)}
    seen: dict[str, list[expect.Seen]] = {name: [] for name in names}
    for d, mask, colour in zip(found.found, masks, colours, strict=True):
        seen[d.name].append(expect.Seen(d.score, d.box, mask, colour))
    return seen, used


@dataclass(frozen=True)
class JudgeWork:
    request: JudgeRequest  # checked, its images decoded
    lpips: bool  # measure LPIPS too (its weights are on this machine)


def plan(request: JudgeRequest, lpips_missing: str | None) -> JudgeWork | None:
    """The model work a judge call needs, or None when its checks are all model-free. LPIPS runs with
    preservation when its weights are here (`lpips_missing` says why not, as a warning, when they are not)."""
    lpips = "preservation" in request.checks and request.original is not None
    if lpips and lpips_missing is not None:
        request.warnings.append(f"preservation: LPIPS not computed: {lpips_missing}")
        lpips = False
    needs_models = (
        "alignment" in request.checks
        or request.questions
        or request.reference is not None
        or lpips
        or bool(request.expect)
    )
    return JudgeWork(request, lpips) if needs_models else None


def work(given: JudgeWork, models: ModelCache, job: Progress) -> ModelScores:
    """CLIPScore, LPIPS and VQAScore for every image; progress per image and per question, cancellable."""
    request, lpips = given.request, given.lpips
    n = len(request.images)
    pil = [Image.fromarray(array) for array in request.arrays]  # uint8 RGB, 16-bit scaled (not clipped)
    alignment: list[Alignment | None] = [None] * n
    reference: list[float | None] = [None] * n
    checklist: list[list[QuestionScore] | None] = [None] * n
    used: dict[str, str] = {}
    tiny, warnings = False, []
    timings: dict[str, float] = {"queue": round(time.time() - job.created, 4)}
    total = (n if "alignment" in request.checks else 0) + (n if lpips else 0) + n * len(request.questions)
    total += n if request.expect else 0
    step = 0
    clip: Loaded | None = None
    if "alignment" in request.checks or request.reference is not None:
        started = time.perf_counter()
        clip = models.get("clip")
        timings["load_clip"] = round(time.perf_counter() - started, 4)
        used["clip"], tiny = clip.label, tiny or clip.tiny
    # 1. alignment: one batch of image embeddings against the prompt (and the reference image)
    if clip is not None:
        started = time.perf_counter()
        feats = clip_embed_images(clip, pil)
        if request.reference is not None:
            reference[:] = clipscore(feats, clip_embed_images(clip, [request.reference]).expand_as(feats))
        timings["clip_images"] = round(time.perf_counter() - started, 4)
    if "alignment" in request.checks and clip is not None:
        started = time.perf_counter()
        text, counts = clip_embed_texts(clip, [request.prompt or ""])
        limit = clip_text_limit(clip.model[1], clip.model[0])
        if counts[0] > limit:
            warnings.append(
                f"prompt is {counts[0]} tokens, over the CLIP limit of {limit}: alignment scores only its "
                f"first {limit} tokens (the checklist still asks every question)"
            )
        for i, score in enumerate(clipscore(feats, text.expand_as(feats))):
            alignment[i] = Alignment(
                clipscore=score, threshold=request.min_alignment, passed=score >= request.min_alignment
            )
            step += 1
            job.progress(step, total, f"judge: alignment {i + 1}/{n}")
        timings["alignment"] = round(time.perf_counter() - started, 4)
    distances = None
    if lpips:
        started = time.perf_counter()
        try:
            net = models.get("lpips")
        except ToolError as exc:  # e.g. a truncated weights file: the other preservation figures stand
            warnings.append(f"preservation: LPIPS not computed: {exc}")
        else:
            used["lpips"] = net.label
            distances = []
            for i, arr in enumerate(request.arrays):
                distances.append(perceptual.lpips(net.model, arr, request.original, request.mask, net.device))
                step += 1
                job.progress(step, total, f"judge: LPIPS {i + 1}/{n}")
            if any(d == (None, None) for d in distances):
                warnings.append(
                    f"preservation: LPIPS needs {perceptual.MIN_SIDE}+ px a side; null for smaller"
                )
        timings["lpips"] = round(time.perf_counter() - started, 4)
    # 1b. expect: what the detector, segmenter and CLIP see of each expected object
    evidence: list[Any] | None = None
    if request.expect:
        started = time.perf_counter()
        evidence = []
        for i, image in enumerate(pil):
            seen, loaded = expect_evidence(models, image, request.expect, clip, warnings)
            evidence.append(seen)
            for role, model in loaded.items():
                used[role], tiny = model.label, tiny or model.tiny
            step += 1
            job.progress(step, total, f"judge: expectations {i + 1}/{n}")
        timings["expect"] = round(time.perf_counter() - started, 4)
    # 2. checklist: one VQA forward per image and question
    if request.questions:
        started = time.perf_counter()
        vlm = models.get("vlm")
        timings["load_vlm"] = round(time.perf_counter() - started, 4)
        used["vlm"], tiny = vlm.label, tiny or vlm.tiny
        yes, no = answer_token_ids(vlm.model[1].tokenizer)
        started = time.perf_counter()
        for i, image in enumerate(pil):
            image = vlm_working_copy(image, vlm.model[1])
            answers = []
            for q in request.questions:
                p_yes, p_raw = vqa_p_yes(vlm, image, q, yes, no)
                answers.append(
                    QuestionScore(
                        question=q,
                        p_yes=round(p_yes, 5),
                        p_yes_raw=round(p_raw, 6),
                        passed=p_yes >= QUESTION_PASS,
                    )
                )
                step += 1
                job.progress(step, total, f"judge: image {i + 1}/{n}, question {len(answers)}")
            checklist[i] = answers
        timings["checklist"] = round(time.perf_counter() - started, 4)
        # 3. where: a failed question is localised on the crop CLIP matches best (or the edit mask)
        failed = [(i, a) for i, answers in enumerate(checklist) for a in answers or [] if not a.passed]
        if failed and request.mask_box is not None:
            for _, a in failed:
                a.where = request.mask_box
        elif failed:
            started = time.perf_counter()
            if clip is None:
                try:
                    clip = models.get("clip")
                except ToolError as exc:  # no CLIP weights: the checklist still stands, without boxes
                    warnings.append(f"failed questions not localised: {exc}")
                    return ModelScores(
                        alignment, reference, checklist, used, tiny, warnings, timings, distances, evidence
                    )
                used["clip"], tiny = clip.label, tiny or clip.tiny
            for i in sorted({i for i, _ in failed}):
                boxes = localise(clip, pil[i], [a.question for k, a in failed if k == i])
                for k, a in failed:
                    if k == i:
                        a.where = boxes[a.question]
            timings["localise"] = round(time.perf_counter() - started, 4)
    return ModelScores(alignment, reference, checklist, used, tiny, warnings, timings, distances, evidence)

"""judge: score, check and rank images so the agent knows what to fix.

Plain functions. `check_request` validates everything before any model runs; `model_free` runs the
quality, preservation and foreground checks (tools/quality.py, tools/preservation.py); the model work
(CLIPScore alignment, VQAScore checklist) is tools/judge_models.py, run on the worker thread; `finish`
builds the verdicts (failing items first, each with a next step), ranks the images (fewest failing items,
then the highest overall score) and writes the scores onto stored input images.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image
from pydantic import BaseModel, Field

from tools.core.images import ImageStore, Resolved, read_note
from tools.core.jobs import JobHandle
from tools.core.masks import BLEND_BLUR, BLEND_DILATE, box_mask, dilate, reach, read_mask, tight_bbox
from tools.metrics import preservation as pres
from tools.metrics import quality as qual

if TYPE_CHECKING:
    from tools.judge.work import ModelScores

Check = Literal["alignment", "checklist", "quality", "preservation", "foreground"]
CHECKS: tuple[Check, ...] = ("alignment", "checklist", "quality", "preservation", "foreground")
QUESTION_PASS = 0.5
DEFAULT_MIN_ALIGNMENT = 20.0  # CLIP ViT-L/14: matching captions score ~25-35, unrelated ones ~10-18
ALIGNMENT_FULL = 35.0  # the CLIPScore that counts as a full 1.0 in `overall`
MAX_QUESTION_CHARS = 300
_SPLIT = re.compile(r"[,;.\n]|\band\b|\bwith\b", re.IGNORECASE)


# -- results ------------------------------------------------------------------------------------------
class NextStep(BaseModel):
    """For refine_region: `image` with `bbox` or `mask`, and `prompt`, are that call's arguments as they are.
    For judge: `image`, `original` and `mask` are the arguments of the judge call to make instead."""

    action: Literal["refine_region", "strengthen_prompt", "regenerate", "judge"]
    image: str | None = Field(
        default=None,
        description="The image to pass (null: this judgement's image, which has no store id: pass it as you "
        "passed it to judge).",
    )
    bbox: list[int] | None = Field(default=None, description="[x0, y0, x1, y1] to pass to refine_region.")
    mask: str | None = Field(default=None, description="A mask id to pass as `mask`.")
    original: str | None = Field(default=None, description="For action judge: the `original` to pass.")
    prompt: str | None = Field(
        default=None,
        description="The prompt for that call (null for refine_region: none is known, write one).",
    )
    why: str


class Item(BaseModel):
    check: str = Field(description="e.g. checklist, alignment, quality.sharpness, preservation, foreground.")
    passed: bool
    value: float | None = None
    threshold: float | None = None
    detail: str
    next_step: NextStep | None = None


class QuestionScore(BaseModel):
    question: str
    p_yes: float = Field(description="P(yes) / (P(yes) + P(no)) over the answer tokens; passes at >= 0.5.")
    p_yes_raw: float = Field(description="P(yes) over the whole vocabulary (VQAScore's number).")
    passed: bool
    where: list[int] | None = Field(
        default=None, description="For a failed question: [x0, y0, x1, y1] of the crop CLIP matches best."
    )


class Alignment(BaseModel):
    clipscore: float = Field(description="100 * max(cos, 0), 0..100; see the tool description for scales.")
    threshold: float
    passed: bool


class Judgement(BaseModel):
    index: int = Field(description="Position in the images given (0-based).")
    id: str | None = Field(default=None, description="Store id when the image came from the store.")
    width: int
    height: int
    verdict: Literal["pass", "fix"]
    overall: float = Field(description="0..1: mean of checklist P(yes), CLIPScore/35 and the quality score.")
    items: list[Item] = Field(
        description="Every check, failing items first, each failing one with a next step."
    )
    alignment: Alignment | None = None
    reference_similarity: float | None = Field(
        default=None,
        description="100 * max(cos, 0) between the CLIP image embeddings of image and reference.",
    )
    checklist: list[QuestionScore] | None = None
    quality: qual.Quality | None = None
    preservation: pres.Preservation | None = None
    foreground: pres.ForegroundIntegrity | None = None


class JudgeResult(BaseModel):
    status: str = Field(description="'done', or 'running' when the work outlived max_wait_s (see `job`).")
    judgements: list[Judgement] = Field(default_factory=list)
    ranking: list[int] = Field(default_factory=list, description="Image indexes, best first.")
    best: int | None = Field(
        default=None, description="Index of the best image (fewest failures, then overall)."
    )
    best_id: str | None = None
    questions: list[str] = Field(default_factory=list, description="The checklist questions asked.")
    question_source: str = Field(default="none", description="'given', 'split from prompt' or 'none'.")
    models: dict[str, str] = Field(default_factory=dict, description="The model used for each model check.")
    tiny: bool = Field(default=False, description="True when a tiny random-weight model made any score.")
    warnings: list[str] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")
    job: JobHandle | None = None


# -- the request ----------------------------------------------------------------------------------------
@dataclass
class JudgeRequest:
    images: list[Resolved]
    arrays: list[Any]  # uint8 RGB numpy arrays
    prompt: str | None
    questions: list[str]
    question_source: str
    checks: tuple[Check, ...]
    min_alignment: float
    reference: Image.Image | None = None
    original: Any = None
    original_image: Image.Image | None = None  # as given: alpha and bit depth, for hidden_changes
    original_id: str | None = None  # its store id, for a next step that redoes an edit from it
    mask: Any = None  # bool array, True = edited region
    mask_id: str | None = None  # its store id, to tell an edit's region mask from its blend mask
    mask_box: list[int] | None = None
    foreground_mask: Any = None
    warnings: list[str] = field(default_factory=list)


def split_prompt(prompt: str) -> list[str]:
    """The checklist rule when no questions are given: split the prompt at , ; . newlines and the words
    'and' / 'with'; keep fragments of 3+ characters, once each. One fragment: the whole prompt."""
    seen: dict[str, None] = {}
    for part in _SPLIT.split(prompt):
        part = part.strip(" \t\"'")
        if len(part) >= 3 and part.lower() not in {p.lower() for p in seen}:
            seen[part] = None
    parts = list(seen)
    return parts if len(parts) > 1 else [prompt.strip()]


def check_request(
    *,
    images: list[Resolved],
    prompt: str | None,
    questions: list[str] | None,
    reference: Resolved | None,
    original: Resolved | None,
    mask: Resolved | None,
    foreground_mask: Resolved | None,
    checks: Sequence[str] | None,
    min_alignment: float,
    max_questions: int,
    max_prompt_chars: int,
) -> JudgeRequest:
    """Validate sizes, limits and which checks can run; raise ToolError naming the field."""
    warnings: list[str] = []
    if prompt is not None:
        if not prompt.strip():
            raise ToolError("prompt: empty; pass the prompt the images were made from, or omit it.")
        if len(prompt) > max_prompt_chars:
            raise ToolError(f"prompt: {len(prompt)} characters is over the limit of {max_prompt_chars}.")
        prompt = prompt.strip()
    # 1. questions: given, or split from the prompt
    source = "none"
    if questions is not None:
        if not questions:
            raise ToolError(
                f"questions: the list is empty; pass 1..{max_questions} yes/no questions, or omit it to "
                "split them from the prompt."
            )
        if len(questions) > max_questions:
            raise ToolError(
                f"questions: {len(questions)} is over the limit of {max_questions}; keep the ones that "
                "matter most, or judge in several calls."
            )
        for i, q in enumerate(questions):
            if not q or not q.strip():
                raise ToolError(f"questions[{i}]: empty; each question names one thing the image must show.")
            if len(q) > MAX_QUESTION_CHARS:
                raise ToolError(
                    f"questions[{i}]: {len(q)} characters; keep questions under {MAX_QUESTION_CHARS}."
                )
        questions, source = [q.strip() for q in questions], "given"
    elif prompt:
        questions, source = split_prompt(prompt), "split from prompt"
        if len(questions) > max_questions:
            warnings.append(
                f"the prompt split into {len(questions)} questions; only the first {max_questions} asked"
            )
            questions = questions[:max_questions]
        questions = [q[:MAX_QUESTION_CHARS] for q in questions]
    else:
        questions = []
    # 2. which checks run: the asked ones must have their inputs; by default every one that can
    if checks is not None and not checks:
        raise ToolError(
            f"checks: the list is empty; leave checks out to run every check that can run, or name some of "
            f"{', '.join(CHECKS)}."
        )
    wanted = tuple(dict.fromkeys(checks)) if checks else None
    needs = {
        "alignment": (prompt is not None, "a prompt"),
        "checklist": (bool(questions), "a prompt or questions"),
        "preservation": (original is not None, "an original"),
        "foreground": (foreground_mask is not None, "a foreground_mask"),
        "quality": (True, ""),
    }
    if wanted is None:
        selected = tuple(c for c in CHECKS if needs[c][0])
    else:
        for c in wanted:
            if not needs[c][0]:
                raise ToolError(f"checks: {c!r} needs {needs[c][1]}; pass it or leave {c!r} out of checks.")
        selected = tuple(c for c in CHECKS if c in wanted)
    if mask is not None and original is None:
        raise ToolError("mask: needs `original` (the image before the edit) to compare against; pass both.")
    # 3. sizes: an original and the masks must align with every image
    sizes = {img.image.size for img in images}
    request = JudgeRequest(
        images=images,
        arrays=[qual.to_array(img.image) for img in images],
        prompt=prompt,
        questions=questions if "checklist" in selected else [],
        question_source=source if "checklist" in selected else "none",
        checks=selected,
        min_alignment=min_alignment,
        reference=Image.fromarray(qual.to_array(reference.image)) if reference is not None else None,
        warnings=warnings,
    )
    given = [(f"images[{i}]", img) for i, img in enumerate(images)] + [("original", original)]
    warnings.extend(filter(None, (read_note(ref.image, name) for name, ref in given if ref is not None)))
    for name, ref in (("original", original), ("mask", mask), ("foreground_mask", foreground_mask)):
        if ref is None:
            continue
        if len(sizes) > 1:
            listed = ", ".join(f"{img.image.width}x{img.image.height}" for img in images)
            raise ToolError(
                f"images: sizes differ ({listed}) but {name} must align with every image; judge images of "
                f"one size per call when passing {name}."
            )
        (w, h) = next(iter(sizes))
        if ref.image.size != (w, h):
            raise ToolError(
                f"{name}: {ref.image.width}x{ref.image.height} does not match the image size {w}x{h}; pass "
                f"the {name} made for these images (same width and height)."
            )
    if original is not None:
        request.original = qual.to_array(original.image)
        request.original_image = original.image
        request.original_id = original.id
    if mask is not None:
        request.mask = read_mask(mask.image, "mask").mask
        request.mask_id = mask.id
        box = tight_bbox(request.mask)
        request.mask_box = list(box) if box else None
    if foreground_mask is not None:
        request.foreground_mask = read_mask(foreground_mask.image, "foreground_mask").mask
        if not request.foreground_mask.any():
            raise ToolError("foreground_mask: has no white pixels; white must mark the object to protect.")
    return request


# -- model-free checks ----------------------------------------------------------------------------------
def model_free(request: JudgeRequest) -> list[dict[str, Any]]:
    """Quality, preservation and foreground integrity of every image (no model)."""
    out = []
    for arr, given in zip(request.arrays, request.images, strict=True):
        found: dict[str, Any] = {}
        if "quality" in request.checks:
            found["quality"] = qual.quality(arr)
        if "preservation" in request.checks:
            hidden = pres.hidden_changes(given.image, request.original_image)
            found["preservation"] = pres.preservation(arr, request.original, request.mask, hidden)
        if "foreground" in request.checks:
            found["foreground"] = pres.foreground_integrity(arr, request.foreground_mask, request.original)
        out.append(found)
    return out


# -- verdicts, ranking, storage -------------------------------------------------------------------------
def _items(
    request: JudgeRequest,
    found: dict[str, Any],
    align: Alignment | None,
    answers,
    image_id: str | None,
    redo: dict,
    spill_mask: str | None = None,
) -> list[Item]:
    """Every check as an item; a failing one says what to do next, refine_region steps with their arguments
    (`redo`: for a refine_region output, the input, region mask and prompt it was made from)."""
    items: list[Item] = []
    prompt = request.prompt or ""
    if answers:
        failing = [a for a in answers if not a.passed]
        many = len(failing) * 2 > len(answers)
        for a in answers:
            step = None
            if not a.passed and many:
                step = NextStep(
                    action="regenerate",
                    prompt=_stronger(prompt, [f.question for f in failing]),
                    why=f"{len(failing)} of {len(answers)} questions fail: regenerate with the missing "
                    "elements first and explicit in the prompt (or raise guidance).",
                )
            elif not a.passed:
                # judged with a mask, `where` is the mask's box; for an edit limner made, its region mask
                # instead: the blend mask's box would grow by the feathered rim on every round
                region = redo.get("mask") if request.mask is not None else None
                step = NextStep(
                    action="refine_region",
                    image=image_id,
                    bbox=None if region else a.where,
                    mask=region,
                    prompt=a.question,
                    why=f'"{a.question}" is not shown (P(yes) {a.p_yes:.2f}); refine the region where it '
                    "belongs with this as the prompt.",
                )
            items.append(
                Item(
                    check="checklist",
                    passed=a.passed,
                    value=a.p_yes,
                    threshold=QUESTION_PASS,
                    detail=f'"{a.question}": P(yes) {a.p_yes:.3f}',
                    next_step=step,
                )
            )
    if align is not None:
        items.append(
            Item(
                check="alignment",
                passed=align.passed,
                value=align.clipscore,
                threshold=align.threshold,
                detail=f"CLIPScore {align.clipscore:.1f} against the prompt",
                next_step=None
                if align.passed
                else NextStep(
                    action="strengthen_prompt",
                    prompt=_stronger(prompt, [a.question for a in answers or [] if not a.passed]),
                    why="the image matches the prompt weakly: put the subject first, be concrete, then "
                    "generate again (more candidates help).",
                ),
            )
        )
    if (q := found.get("quality")) is not None:
        advice = {
            "sharpness": ("regenerate", "blurry: regenerate with more steps or at the model's native size."),
            "underexposure": (
                "strengthen_prompt",
                "too dark: add lighting to the prompt ('bright, well lit').",
            ),
            "overexposure": ("strengthen_prompt", "blown out: add 'soft, balanced light' or lower guidance."),
            "noise": ("regenerate", "noisy: regenerate with more denoising steps."),
            "blockiness": ("regenerate", "JPEG blocks: use a lossless source or regenerate."),
        }
        for name, (action, why) in advice.items():
            m: qual.Metric = getattr(q, name)
            items.append(
                Item(
                    check=f"quality.{name}",
                    passed=m.passed,
                    value=m.score,
                    threshold=m.threshold,
                    detail=f"{name} score {m.score:.2f} (raw {m.raw:g})",
                    next_step=None if m.passed else NextStep(action=action, why=why),  # type: ignore[arg-type]
                )
            )
    if (p := found.get("preservation")) is not None and request.mask is not None:
        items.append(
            Item(
                check="preservation",
                passed=p.passed,
                value=p.outside.changed_pixels,
                threshold=0,
                detail=f"{p.outside.changed_pixels} pixels changed outside the mask "
                f"(SSIM outside {p.outside.ssim:.4f}, inside {p.inside.ssim if p.inside else 1:.4f})",
                next_step=None if p.passed else _preservation_step(request, image_id, redo, p),
            )
        )
    if (f := found.get("foreground")) is not None:
        items.append(
            Item(
                check="foreground.over_extension",
                passed=f.over_extension <= pres.OVER_EXTENSION_LIMIT,
                value=f.over_extension,
                threshold=pres.OVER_EXTENSION_LIMIT,
                detail=f"{f.over_extension:.1%} of the band around the object continues it",
                next_step=None
                if f.over_extension <= pres.OVER_EXTENSION_LIMIT
                else _spill_step(image_id, spill_mask),
            )
        )
        if f.fidelity is not None:
            items.append(
                Item(
                    check="foreground.fidelity",
                    passed=bool(f.fidelity_passed),
                    value=f.fidelity.psnr,
                    threshold=pres.FIDELITY_MIN_PSNR,
                    detail=f"object PSNR {f.fidelity.psnr:.1f} dB, SSIM {f.fidelity.ssim:.4f} against the original",
                    next_step=None
                    if f.fidelity_passed
                    else NextStep(
                        action="regenerate",
                        bbox=f.box,
                        why="the object itself changed: regenerate with the foreground pasted back unchanged.",
                    ),
                )
            )
    return sorted(items, key=lambda it: it.passed)  # stable: failing first, in check order


def _preservation_step(request: JudgeRequest, image_id: str | None, redo: dict, p: Any) -> NextStep:
    """What to do about pixels changed outside the mask. For an edit limner made, first rule out a mismatch
    of the judge call itself: an original other than the edit's input (earlier edits show as changes), or
    the edit's region mask where its blend mask belongs (the feathered rim shows as changes)."""
    if redo and request.original_id is not None and redo["image"] != request.original_id:
        return NextStep(
            action="judge",
            image=image_id,
            original=redo["image"],
            mask=redo["blend"],
            why=f"this image was refined from {redo['image']}, not from the original passed: the changes "
            "outside the mask may be earlier edits'. Judge it against the input it was made from, with the "
            "mask that edit may write.",
        )
    if redo and request.mask_id is not None and request.mask_id == redo["mask"] and redo["blend"]:
        return NextStep(
            action="judge",
            image=image_id,
            original=redo["image"],
            mask=redo["blend"],
            why="the mask passed is the edit's region; the edit also writes the feathered rim around it: judge "
            "again with its mask_id, the pixels it may change.",
        )
    prompt = redo.get("prompt") or request.prompt
    return NextStep(
        action="refine_region",
        image=redo.get("image") or request.original_id,
        mask=redo.get("mask"),
        bbox=None if redo.get("mask") else request.mask_box,
        prompt=prompt,
        why=f"the edit leaked outside the mask (changed pixels in {p.changed_outside_box}): redo refine_region "
        "on the original"
        + (" with the region and prompt it was made from." if redo else " with your region and prompt.")
        + ("" if prompt else " Write the prompt: none is known."),
    )


def _spill_step(image_id: str | None, spill_mask: str | None) -> NextStep:
    """Repaint the spill as background through a mask kept clear of the object by the blend's reach, so the
    object's pixels stay bit-exact; a spill too close to the object to repaint that way means regenerating."""
    if spill_mask is None:
        return NextStep(
            action="regenerate",
            image=image_id,
            why="the object spills past its own outline, too close to it to repaint without touching it: "
            "regenerate (generate with the foreground and repair=true repaints a spill as it goes).",
        )
    return NextStep(
        action="refine_region",
        image=image_id,
        mask=spill_mask,
        prompt="background only, nothing attached to the object",
        why="the object spills past its own outline: repaint the spill as background (the mask keeps the "
        "default blend clear of the object, so the object stays bit-exact).",
    )


def spill_region(fg: np.ndarray, box: list[int] | None) -> np.ndarray | None:
    """The over-extension box without the object grown by the blend's reach (refine_region's default
    dilate and blur) and a pixel or two more: repainting it leaves every object pixel as it is. None when empty."""
    if box is None:
        return None
    clear = (
        2 * reach(BLEND_DILATE, BLEND_BLUR) + 5
    )  # a kernel size; an elliptic kernel's reach is a bit short
    region = box_mask(fg.shape[1], fg.shape[0], box) & ~dilate(fg, clear)
    return region if region.any() else None


def _stronger(prompt: str, missing: list[str]) -> str:
    """The prompt with the missing elements moved to the front, stated plainly."""
    if not missing:
        return prompt
    lead = ", ".join(dict.fromkeys(missing))
    return f"{lead}; {prompt}" if prompt else lead


def _made_from(store: ImageStore, image_id: str | None) -> dict[str, Any]:
    """For a stored refine_region output: the input, region mask and prompt it was made from, else {}."""
    if image_id is None:
        return {}
    meta = store.meta(image_id)
    if meta.get("tool") != "refine_region" or not meta.get("parents"):
        return {}
    return {
        "image": meta["parents"][0],
        "mask": meta.get("region_mask_id"),
        "blend": meta.get("mask_id"),
        "prompt": meta["params"].get("prompt"),
    }


def finish(
    request: JudgeRequest,
    found: list[dict[str, Any]],
    scores: ModelScores | None,
    store: ImageStore,
    timings: dict[str, float],
) -> JudgeResult:
    """Verdict per image, ranking, and the scores written onto stored inputs."""
    judgements = []
    for i, img in enumerate(request.images):
        align = scores.alignment[i] if scores else None
        answers = scores.checklist[i] if scores else None
        spill_mask = None
        fg = found[i].get("foreground")
        if fg is not None and fg.over_extension > pres.OVER_EXTENSION_LIMIT:
            region = spill_region(request.foreground_mask, fg.over_extension_box)
            if region is not None:
                stored = store.put(
                    Image.fromarray(region.astype(np.uint8) * 255), tool="mask", params={"mask": "spill"}
                )
                spill_mask = stored.id
        items = _items(request, found[i], align, answers, img.id, _made_from(store, img.id), spill_mask)
        parts = []
        if answers:
            parts.append(sum(a.p_yes for a in answers) / len(answers))
        if align is not None:
            parts.append(min(align.clipscore / ALIGNMENT_FULL, 1.0))
        if found[i].get("quality") is not None:
            parts.append(found[i]["quality"].score)
        judgements.append(
            Judgement(
                index=i,
                id=img.id,
                width=img.image.width,
                height=img.image.height,
                verdict="pass" if all(it.passed for it in items) else "fix",
                overall=round(sum(parts) / len(parts), 4) if parts else 0.0,
                items=items,
                alignment=align,
                reference_similarity=scores.reference[i] if scores else None,
                checklist=answers,
                preservation=_with_lpips(
                    found[i].get("preservation"), scores.lpips[i] if scores and scores.lpips else None
                ),
                **{k: found[i].get(k) for k in ("quality", "foreground")},
            )
        )
    ranking = sorted(
        range(len(judgements)), key=lambda k: (_failures(judgements[k]), -judgements[k].overall, k)
    )
    models = scores.models if scores else {}
    tiny = bool(scores and scores.tiny)
    warnings = list(request.warnings) + (scores.warnings if scores else [])
    if tiny:
        warnings.insert(
            0, "scores made with tiny random-weight models: noise, useful only to test the plumbing"
        )
    result = JudgeResult(
        status="done",
        judgements=judgements,
        ranking=ranking,
        best=ranking[0] if ranking else None,
        best_id=judgements[ranking[0]].id if ranking else None,
        questions=request.questions,
        question_source=request.question_source,
        models=models,
        tiny=tiny,
        warnings=warnings,
        timings={**timings, **(scores.timings if scores else {})},
    )
    for j in judgements:
        if j.id is not None:
            store.update_meta(j.id, judge=_summary(j, result, request))
    return result


def _with_lpips(found: pres.Preservation | None, lpips: tuple[float | None, float | None] | None):
    if found is None or lpips is None:
        return found
    return found.model_copy(update={"lpips_outside": lpips[0], "lpips_inside": lpips[1]})


def _failures(j: Judgement) -> int:
    return sum(not it.passed for it in j.items)


def _summary(j: Judgement, result: JudgeResult, request: JudgeRequest) -> dict[str, Any]:
    """What the store keeps about a judgement (for lineage and gallery views)."""
    return {
        "at": time.time(),
        "verdict": j.verdict,
        "overall": j.overall,
        "prompt": request.prompt,
        "clipscore": j.alignment.clipscore if j.alignment else None,
        "checklist": {a.question: a.p_yes for a in j.checklist or []},
        "quality": j.quality.score if j.quality else None,
        "failing": [it.check for it in j.items if not it.passed],
        "models": result.models,
        "tiny": result.tiny,
    }

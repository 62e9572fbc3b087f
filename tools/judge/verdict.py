"""judge: score, check and rank images so the agent knows what to fix.

Plain functions. `check_request` validates everything before any model runs; `model_free` runs the
quality, preservation and foreground checks (tools/metrics/); the model work
(CLIPScore alignment, VQAScore checklist) is tools/judge/work.py, run by the runner; `finish`
builds the verdicts (failing items first, each with a next step), ranks the images (fewest failing items,
then the highest overall score) and writes the scores onto stored input images.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from PIL import Image

from tools.core.checks import TINY_NOISE
from tools.core.images import ImageStore
from tools.core.masks import BLEND_BLUR, BLEND_DILATE, box_mask, dilate, mask_image, reach
from tools.judge import expect
from tools.judge.types import (
    ALIGNMENT_FULL,
    QUESTION_PASS,
    Alignment,
    ExpectationResult,
    ExpectedInstance,
    Item,
    Judgement,
    JudgeRequest,
    JudgeResult,
    ModelScores,
    NextStep,
)
from tools.metrics import preservation as pres
from tools.metrics import quality as qual


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


def _expectations(
    request: JudgeRequest, seen: dict[str, list[expect.Seen]], image_id: str | None, store: ImageStore
) -> tuple[list[ExpectationResult], list[Item]]:
    """Each `expect` entry decided (tools/judge/expect.py), with its evidence, and as an item: a wrong colour or
    an object that should not be there is refined through its mask (stored here); a wrong count, a missing
    object or a wrong position means regenerating with the expectation stated in the prompt."""
    results, items = [], []
    masks: dict[int, str] = {}  # id(Seen) -> stored mask id, each instance stored once

    def mask_id(instance: expect.Seen) -> str | None:
        if instance.mask is None:
            return None
        if id(instance) not in masks:
            masks[id(instance)] = store.put(
                mask_image(instance.mask),
                tool="judge",
                params={"mask": "expect instance", "box": list(instance.box)},
                parents=[image_id] if image_id else [],
            ).id
        return masks[id(instance)]

    for k, e in enumerate(request.expect):
        outcome = expect.evaluate(e, seen)
        instances = [
            ExpectedInstance(
                box=list(s.box),
                score=s.score,
                mask_id=mask_id(s) if any(s is w for w in outcome.wrong) else None,  # a next step's target
                color=expect.best_colour(s),
                color_scores=dict(sorted(s.colours.items(), key=lambda kv: -kv[1])[:3])
                if s.colours
                else None,
            )
            for s in outcome.read
        ]
        results.append(
            ExpectationResult(
                expect=e,
                passed=outcome.passed,
                detail=outcome.detail,
                found=outcome.found,
                threshold=outcome.threshold,
                instances=instances,
                relations=outcome.relations,
            )
        )
        step = None
        if not outcome.passed and outcome.wrong:
            first = outcome.wrong[0]
            target = mask_id(first)
            absent = e.present is False or e.count == 0
            step = NextStep(
                action="refine_region",
                image=image_id,
                mask=target,
                bbox=None if target else list(first.box),
                prompt=f"the background, no {e.object}" if absent else f"a {e.color} {e.object}",
                why=f"{outcome.detail}: repaint "
                + (f"the {e.object} away" if absent else f"it {e.color}")
                + _each(outcome),
            )
        elif not outcome.passed:
            step = NextStep(
                action="regenerate",
                prompt=_stronger(request.prompt or "", [expect.phrase(e)]),
                why=f"{outcome.detail}: generate again with the expectation first in the prompt (more "
                "candidates help; counts and positions are what text-to-image models miss most).",
            )
        items.append(
            Item(
                check=f"expect[{k}]",
                passed=outcome.passed,
                value=float(outcome.found),  # instances found; the result's expectations hold the evidence
                detail=outcome.detail,
                next_step=step,
            )
        )
    return results, items


def _each(outcome: expect.Outcome) -> str:
    """How a step with several instances to fix goes on: one call each, and for those beyond the list, the
    next judge call."""
    wrong, listed = len(outcome.wrong), len(outcome.read)
    if wrong == 1:
        return "."
    if wrong <= listed:
        return f" ({wrong} instances: one call each, best first)."
    return (
        f" ({wrong} instances: one call each, best first; the best {listed} are listed with masks, judge "
        "again for the rest)."
    )


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
    """Verdict per image, ranking, and the scores written onto stored inputs. Its own seconds (the rules, the
    instance masks stored, the notes written) are the `verdict` timing."""
    started = time.perf_counter()
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
        expected = None
        if request.expect and scores is not None and scores.expect is not None:
            expected, more = _expectations(request, scores.expect[i], img.id, store)
            items = sorted(more + items, key=lambda it: it.passed)  # failing first, expectations leading
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
                expectations=expected,
            )
        )
    ranking = sorted(
        range(len(judgements)), key=lambda k: (_failures(judgements[k]), -judgements[k].overall, k)
    )
    models = scores.models if scores else {}
    tiny = bool(scores and scores.tiny)
    warnings = list(request.warnings) + (scores.warnings if scores else [])
    if tiny:
        warnings.insert(0, f"scores made with tiny random-weight models: {TINY_NOISE}")
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
            store.annotate(j.id, judge=_summary(j, result, request))
    result.timings["verdict"] = round(time.perf_counter() - started, 4)
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

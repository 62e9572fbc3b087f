"""judge, step 1: every argument checked and every image decoded before any model runs."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.core.checks import check_aspect
from tools.core.images import Resolved, read_note
from tools.core.masks import read_mask, tight_bbox
from tools.judge.expect import check_expect
from tools.judge.types import CHECKS, MAX_QUESTION_CHARS, Check, Expectation, JudgeRequest
from tools.metrics import quality as qual

_SPLIT = re.compile(r"[,;.\n]|\band\b|\bwith\b", re.IGNORECASE)


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


def check_refs(image: str | None, images: Sequence[str] | None, max_images: int) -> list[tuple[str, str]]:
    """The image references to judge, each with the field that named it; checked before anything is read."""
    if image is None and not images:
        raise ToolError(
            "image: no image given; pass `image` (one) or `images` (several) as ids, URIs or paths."
        )
    if image is not None and images:
        raise ToolError("image/images: pass one or the other, not both (put every image in `images`).")
    if image is not None:
        return [("image", image)]
    refs = list(images or [])
    if len(refs) > max_images:
        raise ToolError(
            f"images: {len(refs)} is over the limit of {max_images} per call; judge the rest in another call "
            "and compare the overall scores."
        )
    return [("images" if len(refs) == 1 else f"images[{i}]", ref) for i, ref in enumerate(refs)]


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
    expect: Sequence[Expectation] | None = None,
) -> JudgeRequest:
    """Validate sizes, limits and which checks can run; raise ToolError naming the field."""
    warnings: list[str] = []
    expectations = check_expect(expect) if expect is not None else ()
    # CLIP and the VLM scale an image's short side up: a thin strip would become an enormous one (the
    # original and the masks match the images' size, so these are all the shapes a model sees)
    named = [("image" if len(images) == 1 else f"images[{i}]", img) for i, img in enumerate(images)]
    for name, ref in [*named, ("reference", reference)]:
        if ref is not None:
            check_aspect(name, ref.image.width, ref.image.height)
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
        selected: tuple[Check, ...] = tuple(c for c in CHECKS if needs[c][0])
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
    request.expect = expectations
    return request

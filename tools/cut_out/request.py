"""cut_out, step 1: every argument checked before any model runs, into a frozen request of plain data.

Which method will make the alpha is settled here, from the roles that can be loaded (nothing is loaded):
a named object is found by the detector and masked by the segmenter; with no name the segmenter alone picks
the most salient object; without a segmenter (or, for a name, without a detector) GrabCut does, model-free,
and the result says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from mcp.server.mcpserver.exceptions import ToolError

from tools.core.images import Resolved
from tools.models.cache import ModelCache
from tools.models.detection import DEFAULT_THRESHOLD, SEGMENTERS, detector_class
from tools.models.specs import ModelSpec

MAX_NAME_CHARS = 100
MAX_INSTANCE = 24  # locate keeps at most 25 instances of a name
MAX_FEATHER = 64  # px
FALLBACK_THRESHOLD = 0.3  # a detector spec naming no class (an Auto class): GenEval's detection confidence
MIN_IMAGE_SIDE = 8  # px

# the methods, as results name them
DETECTED = "detector + segmenter"
SALIENT = "segmenter (most salient)"
NO_SEGMENTER = "grabcut (no segmenter)"
NO_DETECTOR = "grabcut (no detector)"


@dataclass(frozen=True)
class CutOutRequest:
    object: str | None  # stripped; None: the most salient object
    threshold: float | None  # the detector's; None when no detector runs
    instance: int  # which match of the name, 0 = best score
    crop: bool
    feather: int  # px; 0: alpha is the mask exactly
    detector: str | None  # the spec names used; None where that role is not used or cannot be loaded
    segmenter: str | None
    method: str  # DETECTED, SALIENT, NO_SEGMENTER or NO_DETECTOR
    missing: tuple[str, ...]  # why a role could not be used, for the warnings


@dataclass(frozen=True)
class CutOutWork:
    request: CutOutRequest
    source: Resolved  # the image to cut from


def check_name(name: str) -> str:
    name = " ".join(name.split())
    if not name:
        raise ToolError(
            "object: an empty name; name the thing to cut out ('red mug'), or leave object out to cut out the "
            "most salient object."
        )
    if len(name) > MAX_NAME_CHARS:
        raise ToolError(
            f"object: {len(name)} characters is over the limit of {MAX_NAME_CHARS}; name the object in a few "
            "words (a noun and what sets it apart)."
        )
    if "." in name:
        raise ToolError(
            f"object: {name!r} holds a '.', which the detector reads as the end of a name; name one object, "
            "without dots."
        )
    return name


def role_spec(models: ModelCache, role: str, name: str | None) -> tuple[ModelSpec | None, str | None]:
    """(the spec, None), or (None, why) when the role's default model cannot be loaded. A model the caller
    named that cannot be loaded is an error: it was asked for."""
    try:
        return models.spec_for(role, name, field=role), None
    except ToolError as exc:
        if name is not None:
            raise
        return None, str(exc)


def check_request(
    *,
    object: str | None,
    threshold: float | None,
    instance: int | None,
    crop: bool,
    feather: int,
    detector: str | None,
    segmenter: str | None,
    models: ModelCache,
) -> CutOutRequest:
    """Validate every argument that does not need the image; raise ToolError naming the field."""
    name = None if object is None else check_name(object)
    if name is None and threshold is not None:
        raise ToolError(
            f"threshold: {threshold} is the detector's score threshold, and the detector runs only for a named "
            "object; pass object=... with it, or leave threshold out."
        )
    if name is None and instance is not None:
        raise ToolError(
            f"instance: {instance} picks among the matches of a named object; pass object=... with it, or "
            "leave instance out."
        )
    if name is None and detector is not None:
        raise ToolError(
            f"detector: {detector!r} finds named objects; pass object=... with it, or leave it out."
        )
    if instance is not None and not 0 <= instance <= MAX_INSTANCE:
        raise ToolError(
            f"instance: {instance} is out of range; use 0..{MAX_INSTANCE} (0 = the best-scoring match)."
        )
    if not 0 <= feather <= MAX_FEATHER:
        raise ToolError(
            f"feather: {feather} px is out of range; use 0..{MAX_FEATHER} (0: the alpha is the mask exactly)."
        )
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        raise ToolError(f"threshold: {threshold} is out of range; use 0..1 (a match is kept above it).")
    missing: list[str] = []
    segmenter_spec, why = role_spec(models, "segmenter", segmenter)
    if why:
        missing.append(f"segmenter role: {why}")
    if segmenter_spec is not None and segmenter_spec.pipeline not in (None, *SEGMENTERS):
        raise ToolError(
            f"segmenter: model {segmenter_spec.name!r} is a {segmenter_spec.pipeline}; cut_out runs "
            f"{', '.join(SEGMENTERS)}. Pick one of those for the segmenter role."
        )
    detector_spec = None
    if name is not None:
        detector_spec, why = role_spec(models, "detector", detector)
        if why:
            missing.append(f"detector role: {why}")
    if detector_spec is not None:
        known = detector_class(detector_spec.pipeline)
        if detector_spec.pipeline is not None and known is None:
            raise ToolError(
                f"detector: model {detector_spec.name!r} is a {detector_spec.pipeline}; cut_out runs "
                f"{' and '.join(DEFAULT_THRESHOLD)}. Pick a detector of one of those classes."
            )
        if threshold is None:
            threshold = DEFAULT_THRESHOLD[known] if known else FALLBACK_THRESHOLD
    if name is not None and detector_spec is None:
        method = NO_DETECTOR
        if instance:
            raise ToolError(
                f"instance: {instance} picks among the detector's matches, and no detector can be loaded "
                f"({missing[-1]}); leave instance out for GrabCut's cut-out of the main object."
            )
        segmenter_spec = None  # GrabCut cuts the main object; a name it cannot read leaves SAM nothing to do
    elif segmenter_spec is None:
        method = NO_SEGMENTER
    else:
        method = DETECTED if name is not None else SALIENT
    return CutOutRequest(
        object=name,
        threshold=float(threshold) if detector_spec is not None and threshold is not None else None,
        instance=instance or 0,
        crop=crop,
        feather=feather,
        detector=detector_spec.name if detector_spec else None,
        segmenter=segmenter_spec.name if segmenter_spec else None,
        method=method,
        missing=tuple(missing),
    )


def check_image(source: Resolved) -> None:
    image = source.image
    if min(image.size) < MIN_IMAGE_SIDE:
        raise ToolError(
            f"image: {image.width}x{image.height} px is too small to cut an object from; pass an image at "
            f"least {MIN_IMAGE_SIDE} px a side."
        )

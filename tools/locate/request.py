"""locate, step 1: every argument checked before any model runs, into a frozen request of plain data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mcp.server.mcpserver.exceptions import ToolError

from tools.core.images import Resolved
from tools.models.cache import ModelCache
from tools.models.detection import DEFAULT_THRESHOLD, SEGMENTERS, detector_class

Masks = Literal["segmenter", "box"]
MAX_OBJECTS = 10  # names per call: one detector prompt holds them all (Grounding DINO: 256 tokens)
MAX_NAME_CHARS = 100
MAX_PER_OBJECT = 25
DEFAULT_PER_OBJECT = 5
FALLBACK_THRESHOLD = 0.3  # a detector spec naming no class (an Auto class): GenEval's detection confidence
MIN_IMAGE_SIDE = 8  # px


@dataclass(frozen=True)
class LocateRequest:
    objects: tuple[str, ...]  # stripped, in the order asked
    threshold: float
    max_per_object: int
    detector: str  # the spec names actually used
    segmenter: str | None  # None with masks='box'
    masks: Masks


@dataclass(frozen=True)
class LocateWork:
    request: LocateRequest
    source: Resolved  # the image to search


def check_objects(objects: Sequence[str]) -> tuple[str, ...]:
    """The names to find: 1..MAX_OBJECTS non-empty names, each once, none holding a '.' (Grounding DINO reads
    '.' as the end of a name)."""
    if not objects:
        raise ToolError(
            "objects: the list is empty; name at least one thing to find, e.g. objects=['mug', 'mug handle']."
        )
    if len(objects) > MAX_OBJECTS:
        raise ToolError(
            f"objects: {len(objects)} names is over the limit of {MAX_OBJECTS} per call; split them over "
            "several calls."
        )
    seen: dict[str, int] = {}
    names = []
    for i, raw in enumerate(objects):
        name = " ".join(raw.split())
        if not name:
            raise ToolError(f"objects[{i}]: an empty name; name a thing to find, e.g. 'red mug'.")
        if len(name) > MAX_NAME_CHARS:
            raise ToolError(
                f"objects[{i}]: {len(name)} characters is over the limit of {MAX_NAME_CHARS}; name the object "
                "in a few words (a noun and what sets it apart)."
            )
        if "." in name:
            raise ToolError(
                f"objects[{i}]: {name!r} holds a '.', which the detector reads as the end of a name; pass each "
                "object as its own entry, without dots."
            )
        if name.lower() in seen:
            raise ToolError(
                f"objects[{i}]: {name!r} repeats objects[{seen[name.lower()]}]; name each object once (every "
                "instance of it is found, up to max_per_object)."
            )
        seen[name.lower()] = i
        names.append(name)
    return tuple(names)


def check_request(
    *,
    objects: Sequence[str],
    threshold: float | None,
    max_per_object: int,
    detector: str | None,
    segmenter: str | None,
    masks: Masks,
    models: ModelCache,
) -> LocateRequest:
    """Validate every argument that does not need the image; raise ToolError naming the field."""
    names = check_objects(objects)
    if not 1 <= max_per_object <= MAX_PER_OBJECT:
        raise ToolError(
            f"max_per_object: {max_per_object} is out of range; use 1..{MAX_PER_OBJECT} (default "
            f"{DEFAULT_PER_OBJECT})."
        )
    try:
        detector_spec = models.spec_for("detector", detector, field="detector")
    except ToolError as exc:
        if detector is not None:  # a name the caller gave: its own error says what there is
            raise
        raise ToolError(f"detector role: locate needs a detector and none can be loaded: {exc}") from None
    known = detector_class(detector_spec.pipeline)
    if detector_spec.pipeline is not None and known is None:
        raise ToolError(
            f"detector: model {detector_spec.name!r} is a {detector_spec.pipeline}; locate runs "
            f"{' and '.join(DEFAULT_THRESHOLD)}. Pick a detector of one of those classes."
        )
    default = DEFAULT_THRESHOLD[known] if known else FALLBACK_THRESHOLD
    if threshold is None:
        threshold = default
    if not 0.0 <= threshold <= 1.0:
        raise ToolError(
            f"threshold: {threshold} is out of range; use 0..1 (a box is kept when its score is above it; "
            f"{default} suits {detector_spec.name})."
        )
    segmenter_name = None
    if masks == "segmenter":
        try:
            segmenter_spec = models.spec_for("segmenter", segmenter, field="segmenter")
        except ToolError as exc:
            if segmenter is not None:
                raise
            raise ToolError(
                f"segmenter role: locate masks with a segmenter and none can be loaded: {exc} Or pass "
                "masks='box' for masks the shape of the boxes."
            ) from None
        if segmenter_spec.pipeline is not None and segmenter_spec.pipeline not in SEGMENTERS:
            raise ToolError(
                f"segmenter: model {segmenter_spec.name!r} is a {segmenter_spec.pipeline}; locate runs "
                f"{', '.join(SEGMENTERS)}. Pick one of those, or pass masks='box'."
            )
        segmenter_name = segmenter_spec.name
    elif segmenter is not None:
        raise ToolError(
            f"segmenter: masks='box' uses no segmenter; drop segmenter={segmenter!r} or pass masks='segmenter'."
        )
    return LocateRequest(
        objects=names,
        threshold=float(threshold),
        max_per_object=max_per_object,
        detector=detector_spec.name,
        segmenter=segmenter_name,
        masks=masks,
    )


def check_image(source: Resolved) -> None:
    image = source.image
    if min(image.size) < MIN_IMAGE_SIDE:
        raise ToolError(
            f"image: {image.width}x{image.height} px is too small to find objects in; pass an image at least "
            f"{MIN_IMAGE_SIDE} px a side."
        )

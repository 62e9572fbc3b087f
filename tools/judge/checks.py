"""judge's model-free checks: quality, preservation and foreground integrity (tools/metrics/)."""

from __future__ import annotations

from typing import Any

from tools.judge.types import JudgeRequest
from tools.metrics import preservation as pres
from tools.metrics import quality as qual


def model_free(request: JudgeRequest) -> list[dict[str, Any]]:
    """Quality, preservation and foreground integrity of every image (no model)."""
    out = []
    for arr, given in zip(request.arrays, request.images, strict=True):
        found: dict[str, Any] = {}
        if "quality" in request.checks:
            found["quality"] = qual.quality(arr)
        if "preservation" in request.checks and request.original_image is not None:  # check_request: both
            hidden = pres.hidden_changes(given.image, request.original_image)
            found["preservation"] = pres.preservation(arr, request.original, request.mask, hidden)
        if "foreground" in request.checks:
            found["foreground"] = pres.foreground_integrity(arr, request.foreground_mask, request.original)
        out.append(found)
    return out

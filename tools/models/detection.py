"""The one way a detector and a segmenter are called: boxes for named objects, and a mask for each box.

- `detect`: an open-vocabulary detector (the `detector` role: Grounding DINO or OWLv2) finds every instance of
  each name above a score threshold. A name's score for a box is the sigmoid of the box's logit for that name:
  OWLv2 scores each name as its own text query; Grounding DINO reads all names in one prompt ("a cup. a
  dog.") and a name's score is the highest over its own tokens. Boxes are mapped to pixel edges of the image
  (`pixel_boxes`), duplicates of one name dropped by non-maximum suppression, the best kept.
- `segment`: SAM (the `segmenter` role) turns each box into a mask of the image's size, all boxes in one
  decoder pass over one image embedding.
- `segment_points`: SAM prompted with each point alone, three masks a point; the caller picks one from their
  low-resolution form and gets it at the image's size (cut_out's most salient object).

Both take a loaded (model, processor) pair (tools/models/loaders.py loads them with transformers' PIL image
processors) and return plain data (numbers, numpy arrays), so locate and judge share them and their work runs
the same on a local or a remote worker.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.models.cache import Loaded

# the detector classes `detect` can run, and the score threshold each is read with by default: GenEval's
# detection confidence for Grounding DINO's calibrated scores; transformers' default for OWLv2, whose
# sigmoid scores of true objects are often 0.1-0.3
DEFAULT_THRESHOLD = {"GroundingDinoForObjectDetection": 0.3, "Owlv2ForObjectDetection": 0.1}
SEGMENTERS = ("SamModel",)
NMS_IOU = 0.5  # two boxes of one name overlapping more than this are one object: the lower score goes
MIN_BOX_SIDE = 1.0  # px: a box narrower or lower than a pixel inside the image holds no object


@dataclass(frozen=True)
class Detection:
    name: str  # the object name as asked
    score: float  # 0..1
    box: tuple[int, int, int, int]  # pixel edges x1, y1, x2, y2 (x2, y2 exclusive), inside the image
    exact: tuple[float, float, float, float]  # the detector's box in pixels before rounding, clipped


@dataclass(frozen=True)
class Detections:
    found: list[Detection]  # by name in the order asked, then by score, best first
    best_below: dict[str, float | None]  # per name: the best score that did not pass the threshold
    warnings: list[str] = field(default_factory=list)


def detector_class(spec_pipeline: str | None) -> str | None:
    """The detector class a spec names when `detect` can run it; None for an Auto class (known once loaded)."""
    return spec_pipeline if spec_pipeline in DEFAULT_THRESHOLD else None


# -- boxes: from the model's normalised (cx, cy, w, h) to pixel edges of the image -----------------------------
def pixel_boxes(
    cxcywh: np.ndarray, frame_width: float, frame_height: float, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """(exact, edges) for N normalised centre boxes. The model's coordinates are fractions of a frame: the
    image itself (Grounding DINO), or the square the image was padded to at its bottom and right (OWLv2: the
    longer side). exact: float corners in pixels, clipped to the image; edges: integer x1, y1, x2, y2 that
    hold the exact box (floor and ceil), x2 and y2 exclusive, so `image.crop(edges)` and a mask's
    [y1:y2, x1:x2] cover it. A box wholly outside the image (in OWLv2's padding) has zero width or height."""
    boxes = np.asarray(cxcywh, dtype=np.float64).reshape(-1, 4)
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    corners *= np.array([frame_width, frame_height, frame_width, frame_height])
    exact = np.clip(corners, 0, [width, height, width, height])
    edges = np.stack(
        [np.floor(exact[:, 0]), np.floor(exact[:, 1]), np.ceil(exact[:, 2]), np.ceil(exact[:, 3])], axis=1
    ).astype(np.int64)
    return exact, edges


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> list[int]:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = list(np.argsort(-scores, kind="stable"))
    areas = [float(a) for a in (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])]
    kept: list[int] = []
    for i in order:
        if all(_iou(boxes[i], areas[i], boxes[k], areas[k]) <= iou for k in kept):
            kept.append(int(i))
    return kept


def _iou(a: np.ndarray, area_a: float, b: np.ndarray, area_b: float) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = area_a + area_b - inter
    return float(inter / union) if union > 0 else 0.0


# -- detection -------------------------------------------------------------------------------------------------
def detect(
    loaded: Loaded, image: Image.Image, names: Sequence[str], threshold: float, max_per_name: int
) -> Detections:
    """Every instance of each name scoring above `threshold` (at most max_per_name per name, best first)."""
    import torch  # lazily: importing torch takes seconds

    model, processor = loaded.model
    kind = type(model).__name__
    rgb = image.convert("RGB")
    width, height = rgb.size
    with torch.inference_mode():
        if kind == "GroundingDinoForObjectDetection":
            scores, cxcywh, warnings = _grounding_dino(loaded, rgb, names)
            frame = (width, height)
        elif kind == "Owlv2ForObjectDetection":
            scores, cxcywh, warnings = _owlv2(loaded, rgb, names)
            frame = (max(width, height),) * 2  # boxes are fractions of the padded square
        else:
            raise ToolError(
                f"detector: model {loaded.spec.name!r} is a {kind}; locate runs "
                f"{' and '.join(DEFAULT_THRESHOLD)}. Choose one of those for the detector role."
            )
    exact, edges = pixel_boxes(cxcywh, frame[0], frame[1], width, height)
    # a box in OWLv2's padding, or one squeezed to less than a pixel, is no object in the image
    inside = (exact[:, 2] - exact[:, 0] >= MIN_BOX_SIDE) & (exact[:, 3] - exact[:, 1] >= MIN_BOX_SIDE)
    found: list[Detection] = []
    best_below: dict[str, float | None] = {}
    for k, name in enumerate(names):
        column = scores[:, k]
        above = column > threshold
        passed = np.flatnonzero(above & inside)
        rejected = column[inside & ~above]
        best_below[name] = round(float(rejected.max()), 4) if rejected.size else None
        # duplicates are judged on the boxes as returned (pixel edges)
        kept = [passed[i] for i in nms(edges[passed].astype(np.float64), column[passed])][:max_per_name]
        for i in kept:
            box = (int(edges[i, 0]), int(edges[i, 1]), int(edges[i, 2]), int(edges[i, 3]))
            exact_box = (
                float(exact[i, 0]),
                float(exact[i, 1]),
                float(exact[i, 2]),
                float(exact[i, 3]),
            )
            found.append(Detection(name, round(float(column[i]), 4), box, exact_box))
    return Detections(found, best_below, warnings)


def _to_model(inputs: dict[str, Any], loaded: Loaded) -> dict[str, Any]:
    """Tensors on the model's device; pixel values in its dtype (float16 on a GPU)."""
    model = loaded.model[0]
    out = {k: v.to(loaded.device) for k, v in inputs.items()}
    if "pixel_values" in out:
        out["pixel_values"] = out["pixel_values"].to(model.dtype)
    return out


def _grounding_dino(
    loaded: Loaded, image: Image.Image, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores (queries x names) and boxes (queries x 4, fractions of the image) from one prompt holding every
    name, built as the processor builds "a cup. a dog.": [CLS] a cup . a dog . [SEP], each name's tokens known."""
    import torch

    model, processor = loaded.model
    tokenizer = processor.tokenizer
    dot, limit = tokenizer.convert_tokens_to_ids("."), int(model.config.max_text_len)
    ids: list[int] = [tokenizer.cls_token_id]
    spans: list[tuple[int, int]] = []
    for name in names:
        tokens = tokenizer(name.lower(), add_special_tokens=False)["input_ids"]
        spans.append((len(ids), len(ids) + len(tokens)))
        ids += [*tokens, dot]
    ids.append(tokenizer.sep_token_id)
    if len(ids) > limit:
        raise ToolError(
            f"objects: the names come to {len(ids)} tokens in {loaded.spec.name}'s prompt, over its limit of "
            f"{limit}; pass fewer or shorter names (call locate again for the rest)."
        )
    pixels = processor.image_processor(images=image, return_tensors="pt")
    text = torch.tensor([ids])
    inputs = {
        "pixel_values": pixels["pixel_values"],
        "pixel_mask": pixels["pixel_mask"],
        "input_ids": text,
        "attention_mask": torch.ones_like(text),
        "token_type_ids": torch.zeros_like(text),
    }
    out = model(**_to_model(inputs, loaded))
    probs = torch.sigmoid(out.logits[0].float())  # (queries, text positions)
    scores = torch.stack([probs[:, a:b].max(dim=1).values for a, b in spans], dim=1)
    return scores.cpu().numpy(), out.pred_boxes[0].float().cpu().numpy(), []


def _owlv2(
    loaded: Loaded, image: Image.Image, names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Scores (patches x names) and boxes (patches x 4, fractions of the padded square), one text query per
    name, padded to the text encoder's length as Owlv2Processor pads them."""
    import torch

    model, processor = loaded.model
    tokenizer = processor.tokenizer
    limit = min(int(model.config.text_config.max_position_embeddings), int(tokenizer.model_max_length))
    warnings = []
    for name, ids in zip(names, tokenizer(list(names))["input_ids"], strict=True):
        if len(ids) > limit:
            warnings.append(
                f"objects: {name!r} is {len(ids)} tokens, over {loaded.spec.name}'s text limit of {limit}: "
                "only its start was read"
            )
    text = tokenizer(
        list(names), padding="max_length", truncation=True, max_length=limit, return_tensors="pt"
    )
    pixels = processor.image_processor(images=image, return_tensors="pt")
    inputs = {
        "pixel_values": pixels["pixel_values"],
        "input_ids": text["input_ids"],
        "attention_mask": text["attention_mask"],
    }
    out = model(**_to_model(inputs, loaded))
    scores = torch.sigmoid(out.logits[0].float())  # (patches, names)
    return scores.cpu().numpy(), out.pred_boxes[0].float().cpu().numpy(), warnings


# -- segmentation ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    mask: np.ndarray  # bool, the image's height x width
    score: float  # the segmenter's own estimate of the mask's IoU with the object


def segment(loaded: Loaded, image: Image.Image, boxes: Sequence[Sequence[float]]) -> list[Segment]:
    """One mask per box (pixel corners), each of the image's size: SAM given the box, a single mask each."""
    import torch

    model, processor = loaded.model
    kind = type(model).__name__
    if kind not in SEGMENTERS:
        raise ToolError(
            f"segmenter: model {loaded.spec.name!r} is a {kind}; locate runs {', '.join(SEGMENTERS)}. "
            "Choose one for the segmenter role, or pass masks='box'."
        )
    if not boxes:
        return []
    rgb = image.convert("RGB")
    inputs = processor(images=rgb, input_boxes=[[list(map(float, b)) for b in boxes]], return_tensors="pt")
    sizes = {k: inputs.pop(k) for k in ("original_sizes", "reshaped_input_sizes")}
    with torch.inference_mode():
        out = model(**_to_model(dict(inputs), loaded), multimask_output=False)
    masks = processor.image_processor.post_process_masks(
        out.pred_masks.float().cpu(), sizes["original_sizes"], sizes["reshaped_input_sizes"]
    )[0]  # (boxes, 1, height, width), bool
    ious = out.iou_scores[0, :, 0].float().clamp(0, 1).cpu().numpy()
    return [Segment(masks[i, 0].numpy().astype(bool), round(float(ious[i]), 4)) for i in range(len(boxes))]


@dataclass(frozen=True)
class Proposals:
    """Every mask SAM proposed for a set of point prompts, as read before upscaling."""

    masks: np.ndarray  # bool (N, h, w): SAM's low-resolution masks over the image's part of its grid
    scores: np.ndarray  # (N,) SAM's predicted IoU of each, 0..1
    points: list[tuple[float, float]]  # (N,) the point (pixels) each mask was prompted with


def segment_points(
    loaded: Loaded,
    image: Image.Image,
    points: Sequence[tuple[float, float]],
    choose: Callable[[Proposals], int | None],
) -> tuple[Segment | None, int | None, Proposals]:
    """SAM prompted with each point alone (a foreground click), three masks a point (whole, part, sub-part),
    all in one decoder pass. `choose` picks one from their low-resolution form (cheap: upscaling every mask
    to a large image would take hundreds of MB); only the chosen one is upscaled to the image's size.
    Returns (the chosen mask or None, its index, every proposal)."""
    import torch

    model, processor = loaded.model
    kind = type(model).__name__
    if kind not in SEGMENTERS:
        raise ToolError(
            f"segmenter: model {loaded.spec.name!r} is a {kind}; cut_out runs {', '.join(SEGMENTERS)}. "
            "Choose one for the segmenter role."
        )
    rgb = image.convert("RGB")
    inputs = processor(
        images=rgb,
        input_points=[[[[float(x), float(y)]] for x, y in points]],
        input_labels=[[[1] for _ in points]],
        return_tensors="pt",
    )
    sizes = {k: inputs.pop(k) for k in ("original_sizes", "reshaped_input_sizes")}
    with torch.inference_mode():
        out = model(**_to_model(dict(inputs), loaded), multimask_output=True)
    low = out.pred_masks[0].float().cpu()  # (points, 3, h, w) logits over the padded square
    pad = processor.image_processor.pad_size
    rows, cols = (int(v) for v in sizes["reshaped_input_sizes"][0])
    h = max(1, round(rows * low.shape[-2] / pad["height"]))
    w = max(1, round(cols * low.shape[-1] / pad["width"]))
    per_point = low.shape[1]
    proposals = Proposals(
        masks=(low[..., :h, :w] > 0).reshape(-1, h, w).numpy(),
        scores=out.iou_scores[0].float().clamp(0, 1).reshape(-1).cpu().numpy(),
        points=[(float(x), float(y)) for x, y in points for _ in range(per_point)],
    )
    index = choose(proposals)
    if index is None:
        return None, None, proposals
    point, which = divmod(index, per_point)
    mask = processor.image_processor.post_process_masks(
        low[None, point : point + 1, which : which + 1],
        sizes["original_sizes"],
        sizes["reshaped_input_sizes"],
    )[0][0, 0]
    return Segment(mask.numpy().astype(bool), round(float(proposals.scores[index]), 4)), index, proposals


# -- a mask per detection, and the matches too close to call -------------------------------------------------
# Two matches whose scores are within this of each other are a tie as far as the detector can tell: a sigmoid
# score moves by more than 0.05 when the name is reworded ("mug" / "the mug"), so the better score is no
# evidence that it is the object meant. Callers list such ties instead of choosing silently.
CLOSE_SCORE = 0.05


@dataclass(frozen=True)
class Masked:
    detection: Detection
    mask: np.ndarray  # bool, the image's height x width
    score: float | None  # the segmenter's estimate of the mask's IoU; None for a box mask
    source: str  # "segmenter", or "box" (no segmenter, or its mask was empty inside the box)


def mask_detections(segmenter: Loaded | None, image: Image.Image, found: Sequence[Detection]) -> list[Masked]:
    """A mask for each detection: the segmenter's given the detector's box (all boxes in one pass), or the box
    itself where no segmenter is given or its mask came back empty (source 'box' says which)."""
    width, height = image.size
    segments: list[Segment | None] = [None] * len(found)
    if segmenter is not None and found:
        segments = list(segment(segmenter, image, [d.exact for d in found]))
    masked = []
    for d, seg in zip(found, segments, strict=True):
        if seg is not None and seg.mask.any():
            masked.append(Masked(d, seg.mask, seg.score, "segmenter"))
        else:
            box = np.zeros((height, width), dtype=bool)
            x1, y1, x2, y2 = d.box
            box[y1:y2, x1:x2] = True
            masked.append(Masked(d, box, None, "box"))
    return masked


def close_matches(found: Sequence[Detection], margin: float = CLOSE_SCORE) -> list[int]:
    """Indices of the detections scoring within `margin` of the best (best first), when there are two or more
    of them: a choice the detector cannot make; [] when the best stands out."""
    if not found:
        return []
    best = max(d.score for d in found)
    close = [i for i, d in enumerate(found) if d.score >= best - margin]
    return close if len(close) > 1 else []

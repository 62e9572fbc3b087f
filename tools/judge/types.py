"""judge's types: the request, the scores the models give, and the result an agent reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field

from tools.core.images import Resolved
from tools.core.jobs import JobHandle
from tools.metrics import preservation as pres
from tools.metrics import quality as qual

Check = Literal["alignment", "checklist", "quality", "preservation", "foreground"]
CHECKS: tuple[Check, ...] = ("alignment", "checklist", "quality", "preservation", "foreground")
QUESTION_PASS = 0.5
DEFAULT_MIN_ALIGNMENT = 20.0  # CLIP ViT-L/14: matching captions score ~25-35, unrelated ones ~10-18
ALIGNMENT_FULL = 35.0  # the CLIPScore that counts as a full 1.0 in `overall`
MAX_QUESTION_CHARS = 300


# -- expectations (GenEval's terms): what the agent expects to see, checked with the detector and CLIP ----------
Position = Literal["left of", "right of", "above", "below"]
# GenEval's colour names
Colour = Literal["red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white"]


class Expectation(BaseModel):
    """One structured expectation: {"object": "apple", "count": 2}, {"object": "apple", "color": "red"},
    {"object": "cup", "position": "left of", "of": "apple"}, {"object": "dog", "present": false}."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    object: str = Field(description="What to look for, a plain noun phrase: 'apple', 'red car'.")
    count: int | None = Field(
        default=None, ge=0, le=16, description="Exactly this many (counted at detection confidence 0.9)."
    )
    color: Colour | None = Field(default=None, description="Its colour (CLIP zero-shot on its masked crop).")
    position: Position | None = Field(default=None, description="Where it is relative to `of`.")
    of: str | None = Field(default=None, description="The object `position` is relative to.")
    present: bool | None = Field(default=None, description="false: the object must not be there.")


class ExpectedInstance(BaseModel):
    box: list[int] = Field(description="[x1, y1, x2, y2] in pixels.")
    score: float = Field(description="Detection confidence, 0..1.")
    mask_id: str | None = Field(
        default=None, description="For an instance to fix (the next step's target): its mask, stored."
    )
    color: str | None = Field(default=None, description="The colour CLIP picks for its masked crop.")
    color_scores: dict[str, float] | None = Field(
        default=None, description="The three likeliest colours and their zero-shot probabilities."
    )


class ExpectationResult(BaseModel):
    expect: Expectation
    passed: bool
    detail: str = Field(description="What was checked and found, in words.")
    found: int = Field(description="Instances of the object above the threshold.")
    threshold: float = Field(description="The detection confidence the object was counted at.")
    instances: list[ExpectedInstance] = Field(
        default_factory=list,
        description="The instances the check read (the evidence), best first: at most `count` (else 1) + 2 of "
        "them; `found` says how many there are.",
    )
    relations: list[str] | None = Field(
        default=None, description="For a position: where the object is relative to `of` (may be several)."
    )


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
    expectations: list[ExpectationResult] | None = Field(
        default=None, description="Each `expect` entry: pass/fail with its evidence (items say what to do)."
    )


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
    expect: tuple[Expectation, ...] = ()  # checked (tools/judge/expect.py)


@dataclass
class ModelScores:
    alignment: list[Alignment | None]
    reference: list[float | None]
    checklist: list[list[QuestionScore] | None]
    models: dict[str, str]
    tiny: bool
    warnings: list[str]
    timings: dict[str, float]
    lpips: list[tuple[float | None, float | None]] | None = None  # (outside, inside) per image
    expect: list[Any] | None = None  # per image: what the detector saw (tools/judge/expect.py Seen lists)

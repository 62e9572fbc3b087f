"""generate, step 1: every argument checked before any model runs, into a frozen request of plain data."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from mcp.server.mcpserver.exceptions import ToolError
from PIL import Image

from tools.core.checks import (
    MAX_ASPECT,
    MAX_SEED,
    MIN_SIDE,
    check_aspect,
    check_guidance,
    check_prompt,
    check_seed,
    check_size,
    check_steps,
    check_text,
)
from tools.core.images import Resolved, read_note
from tools.generate.foreground import MIN_SIDE as MIN_FOREGROUND_SIDE
from tools.generate.foreground import Placement
from tools.models import references as ip
from tools.models.cache import ModelCache
from tools.models.detection import SEGMENTERS
from tools.models.specs import IPAdapterSpec, ModelSpec
from tools.models.weights import weights_present

MAX_REFERENCES = 4  # each adds 4 image tokens to every cross-attention; more blur into an average
DEFAULT_STRENGTH = 0.6  # init_image: the share of the steps re-run (enough to vary, little enough to keep it)
DEFAULT_REFERENCE_STRENGTH = 0.6  # the IP-Adapter scale: the subject and style show, the prompt still leads


@dataclass(frozen=True)
class InputImage:
    """An image the call reads (init_image, a reference): its pixels, and its store id when it has one."""

    image: Image.Image
    id: str | None
    field: str  # "init_image", "references[1]"


@dataclass(frozen=True)
class GenerateRequest:
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance: float
    seeds: tuple[int, ...]
    model: str  # the spec name actually used
    # variations: image-to-image from init (RGB, width x height), re-running `strength` of the steps
    init: InputImage | None = None
    strength: float | None = None
    # subject or style from reference images, through the generator's IP-Adapter at reference_strength, or,
    # with `editor`, as the editor's input images (QwenImageEditPlusPipeline's image list, in order)
    references: tuple[InputImage, ...] = ()
    reference_strength: float | None = None
    adapter: IPAdapterSpec | None = None
    editor: bool = False  # model is an editor: it makes the images from `references`
    read_notes: tuple[str, ...] = ()  # what reading the input images left out


@dataclass(frozen=True)
class ForegroundRequest:
    """generate with a foreground: scenes painted around an object whose pixels stay exact."""

    base: GenerateRequest
    source: Image.Image  # the foreground photo or cut-out
    source_id: str | None  # its store id; stored with the results when it came from elsewhere
    mask: Image.Image | None  # foreground_mask
    placements: tuple[Placement, ...] | None  # None: 'auto'
    scenes: tuple[str, ...]  # ("",) without scenes
    repair: bool
    read_notes: tuple[str, ...]  # what reading the images left out (16-bit colour read at 8 bits, ...)
    segmenter: str | None = None  # finds the object when no mask or alpha does; None: GrabCut

    @property
    def count(self) -> int:
        return (len(self.placements or (None,))) * len(self.scenes) * len(self.base.seeds)


def check_request(
    *,
    prompt: str,
    negative_prompt: str | None,
    width: int | None,
    height: int | None,
    steps: int | None,
    guidance: float | None,
    seed: int | None,
    n: int,
    model: str | None,
    models: ModelCache,
    role: Literal["generator", "inpainter"] = "generator",
    max_pixels: int,
    max_steps: int,
    max_batch: int,
    max_prompt_chars: int,
    init_image: str | None = None,
    strength: float | None = None,
    references: Sequence[str] | None = None,
    reference_strength: float | None = None,
    resolve: Callable[[str, str], Resolved] | None = None,
) -> GenerateRequest:
    """Validate every argument against the settings and the model spec; raise ToolError naming the field.

    A generator call whose `model` names an editor (qwen-image-edit) runs on that editor, with the references
    as its input images. init_image and references are read last, by `resolve(reference, field)` (it may read
    a file or fetch a URL: call this off the event loop then), so a call that fails a check fetches nothing."""
    editor = role == "generator" and model in models.models and models.models[model].role == "editor"
    spec = models.spec_for("editor" if editor else role, model)
    prompt = check_prompt(prompt, max_prompt_chars)
    if negative_prompt is not None:
        check_text("negative_prompt", negative_prompt, max_prompt_chars)
    adapter = None
    if editor:
        check_editor_inputs(spec, init_image, strength, references, reference_strength)
    else:
        adapter = check_image_inputs(spec, models, init_image, strength, references, reference_strength)
    if init_image is None:  # a variation's size defaults to its image's: checked once that is read
        width = spec.focus_size if width is None else width
        height = spec.focus_size if height is None else height
        check_size(width, height, spec.size_factor, spec.name, max_pixels)
        check_aspect(
            "width/height",
            width,
            height,
            f"ask for at most {MAX_ASPECT}:1 and crop the result to the strip you need.",
        )
    steps = check_steps(spec.default_steps if steps is None else steps, max_steps, spec.default_steps)
    guidance = check_guidance(
        spec.default_guidance if guidance is None else guidance, spec.default_guidance, spec.name
    )
    if not 1 <= n <= max_batch:
        raise ToolError(
            f"n: {n} candidates is out of range; use 1..{max_batch} per call (call again for more)."
        )
    # a drawn seed leaves room for the largest batch; a given one must keep all n seeds in range
    base = check_seed(seed, room=max_batch + 1) if seed is None else check_seed(seed, room=n + 1)
    if init_image is not None:
        strength = DEFAULT_STRENGTH if strength is None else strength
        if strength == 0:
            check_round_trip(n, references)
        elif int(steps * strength) < 1:  # diffusers runs int(steps * strength) of the steps
            raise ToolError(
                f"strength: {strength:g} x steps {steps} = {steps * strength:.3g} runs no denoising step; "
                f"raise strength to at least {1 / steps:.3g} or steps to at least {math.ceil(1 / strength)}."
            )
    # 2. the images, last (reading one may fetch it)
    read = [(ref, "init_image") for ref in ([init_image] if init_image is not None else [])]
    read += [(ref, f"references[{i}]") for i, ref in enumerate(references or ())]
    if read and resolve is None:
        raise ValueError("check_request: init_image and references need `resolve`")
    inputs = [_read(resolve, ref, field) for ref, field in read] if resolve is not None else []
    init = inputs.pop(0) if init_image is not None else None
    if init is not None:
        width, height = _variation_size(init, width, height, spec.name, spec.size_factor)
        check_size(width, height, spec.size_factor, spec.name, max_pixels)
        check_aspect("width/height", width, height)
        if init.image.size != (width, height):  # asked for another size: the image is resized to it
            init = InputImage(
                init.image.resize((width, height), Image.Resampling.LANCZOS), init.id, init.field
            )
    assert width is not None and height is not None
    notes = [read_note(i.image, i.field) for i in ([init] if init else []) + inputs]
    return GenerateRequest(
        prompt=prompt,
        negative_prompt=negative_prompt.strip() if negative_prompt else None,
        width=width,
        height=height,
        steps=steps,
        guidance=guidance,
        seeds=tuple(base + i for i in range(n)),
        model=spec.name,
        init=init,
        strength=strength if init is not None else None,
        references=tuple(inputs),
        reference_strength=(DEFAULT_REFERENCE_STRENGTH if reference_strength is None else reference_strength)
        if inputs and not editor
        else None,
        adapter=adapter,
        editor=editor,
        read_notes=tuple(note for note in notes if note),
    )


def check_image_inputs(
    spec: ModelSpec,
    models: ModelCache,
    init_image: str | None,
    strength: float | None,
    references: Sequence[str] | None,
    reference_strength: float | None,
) -> IPAdapterSpec | None:
    """init_image/strength and references/reference_strength, before any image is read; the adapter the
    references will go through (None without references)."""
    if strength is not None:
        if init_image is None:
            raise ToolError(
                "strength: it sets how far a variation moves from init_image; pass init_image too."
            )
        if not (math.isfinite(strength) and 0 <= strength <= 1):
            raise ToolError(
                f"strength: {strength:g} is out of range; use 0..1 (the share of the steps re-run: 0.3 keeps "
                "the composition, 0.6 varies it, 1 repaints it all; 0 runs no step and gives init_image back "
                "through the model's VAE)."
            )
    if reference_strength is not None:
        if references is None:
            raise ToolError(
                "reference_strength: it sets how strongly references steer the image; pass references too."
            )
        if not (math.isfinite(reference_strength) and 0 <= reference_strength <= 1):
            raise ToolError(
                f"reference_strength: {reference_strength:g} is out of range; use 0..1 (0: the references are "
                "not used; 0.5-0.7: their subject and style show while the prompt still leads)."
            )
    if references is None:
        return None
    if not references:
        raise ToolError("references: an empty list; pass 1 to 4 image references, or leave it out.")
    if len(references) > MAX_REFERENCES:
        raise ToolError(
            f"references: {len(references)} images is over the limit of {MAX_REFERENCES}; pass the "
            f"{MAX_REFERENCES} that show the subject or style best (more blur into an average)."
        )
    if spec.ip_adapter is None:
        able = [
            n
            for n, other in models.models.items()
            if other.role == spec.role and ip.can_take_references(other)
        ]
        here = sorted(n for n in able if weights_present(models.models[n], models.models_dir))
        elsewhere = sorted(set(able) - set(here))
        if here:
            instead = f"call with model={here[0]!r}" + (f" (or {', '.join(here[1:])})" if here[1:] else "")
        elif elsewhere:
            instead = (
                f"download the weights of {elsewhere[0]!r} (and its IP-Adapter) and call with that model"
            )
        else:
            instead = "give an SDXL generator an ip_adapter in limner.toml (preset ip-adapter-sdxl)"
        editors = sorted(
            n
            for n, other in models.models.items()
            if other.role == "editor" and weights_present(other, models.models_dir)
        )
        if editors:  # an editor takes them too, as its input images
            instead += f"; an editor reads them as its input images: model={editors[0]!r}"
        raise ToolError(
            f"references: model {spec.name!r} cannot take reference images (it has no IP-Adapter); {instead}, "
            "or describe the subject in the prompt."
        )
    if (why := ip.unavailable(spec.ip_adapter, models)) is not None:
        raise ToolError(why)
    return spec.ip_adapter


def check_round_trip(n: int, references: Sequence[str] | None) -> None:
    """strength 0 runs no denoising step: the VAE round trip of init_image, one image that no seed changes."""
    if n > 1:
        raise ToolError(
            f"n: {n} candidates at strength 0 would all be the same image (no denoising step runs, so the seed "
            "changes nothing); pass n=1, or strength above 0 (e.g. 0.3) for variations."
        )
    if references is not None:
        raise ToolError(
            "references: not used at strength 0 (no denoising step runs to take them); pass strength above 0 "
            "(e.g. 0.5) for a variation that takes them, or leave references out."
        )


def check_editor_inputs(
    spec: ModelSpec,
    init_image: str | None,
    strength: float | None,
    references: Sequence[str] | None,
    reference_strength: float | None,
) -> None:
    """generate on an editor: the references are its input images, at least one and at most MAX_REFERENCES;
    it takes no init_image (pass that image as a reference) and no reference_strength (it has no such scale)."""
    if init_image is not None or strength is not None:
        raise ToolError(
            f"init_image: the editor {spec.name!r} takes its images as references, not init_image/strength; pass "
            "the image in references (the prompt says what to change), or use a generator model for variations."
        )
    if reference_strength is not None:
        raise ToolError(
            f"reference_strength: the editor {spec.name!r} reads its references as input images, with no strength "
            "to set; leave reference_strength out (say in the prompt what to keep of them)."
        )
    if not references:
        raise ToolError(
            f"references: the editor {spec.name!r} makes images from input images and needs at least one; pass "
            f"references=[...] (1 to {MAX_REFERENCES} images: ids, paths, URLs), or leave model out for "
            "text-to-image on the generator."
        )
    if len(references) > MAX_REFERENCES:
        raise ToolError(
            f"references: {len(references)} images is over the limit of {MAX_REFERENCES}; pass the "
            f"{MAX_REFERENCES} that show the subject or style best."
        )


def _read(resolve: Callable[[str, str], Resolved], ref: str, field: str) -> InputImage:
    resolved = resolve(ref, field)
    check_aspect(field, resolved.image.width, resolved.image.height)
    return InputImage(resolved.image, resolved.id, field)


def _variation_size(
    init: InputImage, width: int | None, height: int | None, model: str, factor: int
) -> tuple[int, int]:
    """A variation's size: width and height when given (one given: the other keeps the image's aspect, to the
    model's factor), else the image's own, which must then be one the model makes."""
    w, h = init.image.size
    if width is None and height is None:
        if w % factor or h % factor or min(w, h) < MIN_SIDE:
            raise ToolError(
                f"init_image: {w}x{h} px is not a size {model} makes (multiples of {factor}, at least "
                f"{MIN_SIDE} a side); pass width and height and the image is resized to them."
            )
        return w, h
    if width is None:
        assert height is not None
        return max(MIN_SIDE, round(height * w / h / factor) * factor), height
    if height is None:
        return width, max(MIN_SIDE, round(width * h / w / factor) * factor)
    return width, height


def configured_segmenter(models: ModelCache) -> str | None:
    """The segmenter that finds a foreground object: the segmenter role's own model when it can be loaded
    (its weights are present, or the role names a twin), else None and GrabCut does. The stand-in twin the
    tiny or auto profile puts in place of missing weights is not used here: GrabCut finds a real object
    where a random-weight mask would not, and it has always been the default."""
    try:
        spec = models.spec_for("segmenter")
    except ToolError:
        return None
    if spec.name != models.roles.get("segmenter"):
        return None
    return spec.name if spec.pipeline is None or spec.pipeline in SEGMENTERS else None


def check_foreground(
    base: GenerateRequest,
    source: Resolved,
    mask: Image.Image | None,
    placement: Sequence[Placement] | Literal["auto"],
    scenes: Sequence[str] | None,
    repair: bool,
    *,
    max_batch: int,
    max_prompt_chars: int,
    segmenter: str | None = None,
) -> ForegroundRequest:
    """The foreground call's own arguments, checked; finding the object (GrabCut: 1.6 s at 512 px, 18 s at
    2048) is part of the work, so max_wait_s and cancellation cover it."""
    image = source.image
    check_aspect("foreground", image.width, image.height)
    if min(image.size) < MIN_FOREGROUND_SIDE:
        raise ToolError(
            f"foreground: {image.width}x{image.height} px is too small to hold an object; pass a photo or "
            f"cut-out at least {MIN_FOREGROUND_SIDE} px a side."
        )
    if placement != "auto" and not placement:
        raise ToolError("placement: an empty list; pass 'auto' or at least one {x, y, scale}.")
    if scenes is not None and (not scenes or any(not s.strip() for s in scenes)):
        raise ToolError("scenes: pass a non-empty list of non-empty scene prompts, or leave it out.")
    scene_list = tuple(scenes) if scenes is not None else ("",)
    for i, scene in enumerate(scene_list):
        check_text(f"scenes[{i}]", scene, max_prompt_chars)
    n = len(base.seeds)
    places = 1 if placement == "auto" else len(placement)
    count = places * len(scene_list) * n
    if count > max_batch:
        raise ToolError(
            f"n: placements x scenes x n = {places} x {len(scene_list)} x {n} = {count} candidates, above "
            f"the limit of {max_batch} per call; lower n or split the scenes over several calls."
        )
    if base.seeds[0] + count - 1 > MAX_SEED:  # every candidate's seed must be one generate takes back
        raise ToolError(
            f"seed: {base.seeds[0]} leaves no room for {count} candidates; use 0..{MAX_SEED - count + 1}."
        )
    notes = [read_note(image, "foreground")] + (
        [read_note(mask, "foreground_mask")] if mask is not None else []
    )
    return ForegroundRequest(
        base=base,
        source=image,
        source_id=source.id,
        mask=mask,
        placements=None if placement == "auto" else tuple(placement),
        scenes=scene_list,
        repair=repair,
        read_notes=tuple(note for note in notes if note),
        segmenter=segmenter,
    )

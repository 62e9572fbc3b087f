"""The loaders: one per kind of model (diffusers pipeline, transformers model, detector or segmenter, LPIPS),
chosen by role in LOADERS, and the tiny profile's `ensure_tiny`, which builds a tiny twin once."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from tools.models import perceptual, processors
from tools.models.specs import ModelSpec
from tools.models.twins.builders import BUILDERS as TWINS
from tools.models.weights import how_to_get, lpips_files, lpips_missing


def _load_diffusers(spec: ModelSpec, source: str, dtype: Any, device: str, offline: bool) -> Any:
    import diffusers

    auto = {"generator": "AutoPipelineForText2Image", "inpainter": "AutoPipelineForInpainting"}
    cls = getattr(diffusers, spec.pipeline or auto.get(spec.role, "DiffusionPipeline"))
    try:
        ready = _processors_without_video(cls, source, offline)
        # a processor built here is not the class model_index.json names, which from_pretrained checks what it is
        # passed against: it loads the pipeline without it (None) and the processor is set after
        pipe = cls.from_pretrained(source, dtype=dtype, local_files_only=offline, **dict.fromkeys(ready))
        for name, processor in ready.items():
            setattr(pipe, name, processor)
    except (OSError, ValueError) as exc:  # absent, partial, or a corrupt weights file
        raise ToolError(f"{how_to_get(spec)} ({exc})") from None
    for i, lora in enumerate(spec.lora):
        try:
            pipe.load_lora_weights(
                lora.source, weight_name=lora.weight_name, adapter_name=f"lora{i}", local_files_only=offline
            )
        except (OSError, ValueError) as exc:  # absent, not a LoRA, or offline without a weight_name
            raise ToolError(
                f"model {spec.name!r}: its LoRA {lora.source!r} could not be loaded ({exc}). Point `source` "
                "at a folder or .safetensors file on this machine (with `weight_name` when the folder holds "
                "several), or download it with `hf download` where there is network access."
            ) from None
    if spec.lora:
        pipe.set_adapters([f"lora{i}" for i in range(len(spec.lora))], [lo.scale for lo in spec.lora])
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def _processors_without_video(cls: Any, source: str, offline: bool) -> dict[str, Any]:
    """Components to hand from_pretrained ready-made where it could not build them: without torchvision, a
    Qwen-VL processor (QwenImageEditPlusPipeline's `processor`, a Qwen2VLProcessor) fails to load because its
    video processor needs torchvision, although the pipeline calls it with text and images only. Such a
    processor is assembled from the same subfolder's image processor, tokenizer and chat template
    (tools/models/processors.py), as _load_transformers does for a VLM. Empty where torchvision loads."""
    import transformers  # lazily, as every loader here: importing it takes seconds
    from transformers.utils.import_utils import is_torchvision_available

    if is_torchvision_available():
        return {}
    index = cls.load_config(source, local_files_only=offline)  # model_index.json: name -> [library, class]
    ready: dict[str, Any] = {}
    for name, entry in index.items():
        if not (isinstance(entry, list) and entry[0] == "transformers"):
            continue
        named = getattr(transformers, str(entry[1]), None)  # the class; importing it needs no torchvision
        if isinstance(named, type) and issubclass(named, transformers.ProcessorMixin):
            processor = processors.load_without_video(source, local_files_only=offline, subfolder=name)
            if processor is not None:  # not a Qwen-VL image processor: from_pretrained loads it as usual
                ready[name] = processor
    return ready


def _load_transformers(spec: ModelSpec, source: str, dtype: Any, device: str, offline: bool) -> Any:
    import transformers

    model_cls: Any  # an Auto class or the spec's own; transformers' stubs type each differently
    if spec.role == "clip":
        model_cls, proc_cls = transformers.AutoModel, transformers.AutoProcessor
    else:
        model_cls, proc_cls = transformers.AutoModelForImageTextToText, transformers.AutoProcessor
    if spec.pipeline:
        model_cls = getattr(transformers, spec.pipeline)
    try:
        model = model_cls.from_pretrained(source, dtype=dtype, local_files_only=offline).to(device).eval()
        try:
            processor = proc_cls.from_pretrained(source, local_files_only=offline)
        except ImportError:
            # Qwen-VL processors build a video processor, which needs torchvision; judge sends only images,
            # so without torchvision the processor is assembled from the folder's image processor and
            # tokenizer, where the image processor is Qwen-VL's kind (the rule that class follows)
            from transformers.utils.import_utils import is_torchvision_available

            if spec.role != "vlm" or is_torchvision_available():
                raise
            processor = processors.load_without_video(source, local_files_only=offline)
            if processor is None:  # not a Qwen-VL image processor: the ImportError stands
                raise
    except OSError as exc:
        raise ToolError(f"{how_to_get(spec)} ({exc})") from None
    return model, processor


def _load_detection(spec: ModelSpec, source: str, dtype: Any, device: str, offline: bool) -> Any:
    """A detector or segmenter as (model, processor): the spec's class (default: the zero-shot detection Auto
    class, or SamModel) and its processor with transformers' PIL image processor, on every machine the same
    resizing (the torchvision one, where installed, rounds differently) and no torchvision needed."""
    import transformers

    default = "AutoModelForZeroShotObjectDetection" if spec.role == "detector" else "SamModel"
    model_cls: Any = getattr(transformers, spec.pipeline or default)
    try:
        model = model_cls.from_pretrained(source, dtype=dtype, local_files_only=offline).to(device).eval()
        processor = transformers.AutoProcessor.from_pretrained(
            source, local_files_only=offline, backend="pil"
        )
    except OSError as exc:
        raise ToolError(f"{how_to_get(spec)} ({exc})") from None
    return model, processor


def _load_lpips(spec: ModelSpec, source: str, dtype: Any, device: str, offline: bool) -> Any:
    """LPIPS from the two files in its folder (tools/models/perceptual.py builds the network)."""
    import torch

    backbone, linear = lpips_files(Path(source))  # source is the resolved folder
    if not (backbone.is_file() and linear.is_file()):
        raise ToolError(lpips_missing(spec, Path(source)))
    try:
        net = perceptual.build(
            torch.load(backbone, map_location="cpu", weights_only=True),
            torch.load(linear, map_location="cpu", weights_only=True),
        )
    except Exception as exc:  # a truncated download, another network's checkpoint
        raise ToolError(
            f"LPIPS weights in {Path(source)} could not be loaded ({type(exc).__name__}: {exc}); replace "
            "alexnet-owt-7be5be79.pth and alex.pth with fresh copies (README: LPIPS)."
        ) from None
    return net.to(device)


LOADERS: dict[str, Callable[[ModelSpec, str, Any, str, bool], Any]] = {
    "generator": _load_diffusers,
    "inpainter": _load_diffusers,
    "editor": _load_diffusers,
    "clip": _load_transformers,
    "vlm": _load_transformers,
    "lpips": _load_lpips,
    "detector": _load_detection,
    "segmenter": _load_detection,
    "upscaler": _load_diffusers,
}


# -- the tiny profile ---------------------------------------------------------------------------------
def ensure_tiny(kind: str, models_dir: Path) -> Path:
    """Build the tiny model `kind` once under models_dir (atomically) and return its folder."""
    dest = models_dir / f"tiny-{kind}"
    if (dest / ".complete").is_file():
        return dest
    builders = TWINS
    if kind not in builders:
        raise ToolError(f"no tiny model of kind {kind!r}; kinds: {sorted(builders)}.")
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = models_dir / f".building-tiny-{kind}-{threading.get_ident()}"
    shutil.rmtree(staging, ignore_errors=True)
    builders[kind](staging)
    (staging / ".complete").write_text("built from configs with random weights\n")
    try:
        staging.rename(dest)
    except OSError:  # another process finished first
        shutil.rmtree(staging, ignore_errors=True)
    return dest

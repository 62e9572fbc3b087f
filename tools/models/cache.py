"""Models: the only place that loads weights.

A model is a role (`generator`, `inpainter`, `editor`, `clip`, `vlm`, `lpips`) bound to a `ModelSpec`: a hub
id or local folder, dtype, device and optional LoRA adapters. `ModelCache.get` resolves a role (or a named
spec) to a loaded model once and keeps it warm. The `tiny` profile builds tiny random-weight models from
configs, saves them under `LIMNER_HOME/models`, and loads them through the same `from_pretrained` path
as real weights; every result made with them says so.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from tools.models import perceptual
from tools.models.specs import TINY_FOR_ROLE, TINY_LABEL, ModelSpec, spec_label
from tools.models.twins.builders import BUILDERS as TWINS

logger = logging.getLogger("limner.models")


@dataclass
class Loaded:
    """A loaded model and what results should say about it."""

    spec: ModelSpec
    model: Any  # a diffusers pipeline, or a (model, processor) pair for transformers roles
    device: str
    tiny: bool

    @property
    def label(self) -> str:
        return spec_label(self.spec)


# -- where weights are ------------------------------------------------------------------------------
def lpips_folder(spec: ModelSpec, models_dir: Path) -> Path:
    folder = Path(spec.source).expanduser()
    return folder if folder.is_absolute() else models_dir / folder


def lpips_files(folder: Path) -> tuple[Path, Path]:
    """(AlexNet backbone, linear weights) in an lpips folder; they may be missing."""
    backbones = sorted(folder.glob("alexnet*.pth"))
    return backbones[0] if backbones else folder / "alexnet-owt-7be5be79.pth", folder / "alex.pth"


def weights_present(spec: ModelSpec, models_dir: Path) -> bool:
    """True when the spec's weights are on this disk (a folder, or the Hugging Face cache)."""
    if spec.tiny_kind:
        return True
    if spec.role == "lpips":
        return all(path.is_file() for path in lpips_files(lpips_folder(spec, models_dir)))
    folder = Path(spec.source).expanduser()
    if folder.is_dir():
        return any((folder / f).is_file() for f in ("model_index.json", "config.json"))
    if spec.source.count("/") != 1:
        return False
    from huggingface_hub import try_to_load_from_cache

    for marker in ("model_index.json", "config.json"):
        if isinstance(try_to_load_from_cache(spec.source, marker), str):
            return True
    return False


def local_path(source: str) -> Path | None:
    """The path a source names when it is one (absolute, ./ ../ ~, or there on disk), else None (a hub id)."""
    path = Path(source).expanduser()
    explicit = path.is_absolute() or source.startswith(("./", "../", "~", ".\\"))
    return path if explicit or path.exists() else None


def how_to_get(spec: ModelSpec, models_dir: Path | None = None) -> str:
    if spec.role == "lpips":
        return _lpips_missing(spec, lpips_folder(spec, models_dir or Path(".")))
    folder = local_path(spec.source)
    if folder is not None:
        marker = "model_index.json" if spec.role in ("generator", "inpainter", "editor") else "config.json"
        if not folder.exists():
            state = "does not exist"
        elif not (folder / marker).is_file():
            state = f"holds no {marker}, so it is not a saved {'pipeline' if marker == 'model_index.json' else 'model'}"
        else:
            state = "could not be loaded: a component's weights are missing or corrupt"
        return (
            f"model {spec.name!r}: its source {str(folder)!r} {state}. Point `source` at a folder written by "
            "save_pretrained or `hf download <hub id> --local-dir <folder>` (with its config and every "
            "component's weights), or use the tiny offline profile (LIMNER_PROFILE=tiny)."
        )
    return (
        f"weights for model {spec.name!r} ({spec.source}) are not on this machine. Download them with "
        f"`hf download {spec.source}` on a machine with network access (or point the spec's source at a "
        "local folder in limner.toml), or use the tiny offline profile (LIMNER_PROFILE=tiny)."
    )


def _lpips_missing(spec: ModelSpec, folder: Path) -> str:
    return (
        f"LPIPS weights for {spec.name!r} are not in {folder}: put torchvision's AlexNet checkpoint "
        "(https://download.pytorch.org/models/alexnet-owt-7be5be79.pth) and the lpips package's "
        "lpips/weights/v0.1/alex.pth there (README: LPIPS)."
    )


def pick_device(spec: ModelSpec) -> str:
    import torch

    if spec.device.startswith("cuda"):
        index = int(spec.device.partition(":")[2] or 0)
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            have = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
            raise ToolError(
                f"model {spec.name!r}: device {spec.device!r}, but this torch ({torch.__version__}) sees {have}. "
                'Set device = "auto" (or cpu) in its spec, or install torch\'s CUDA build (README).'
            )
    if spec.device == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise ToolError(
            f"model {spec.name!r}: device 'mps', but Metal is not available here; set device = \"auto\" (or "
            "cpu) in its spec."
        )
    if spec.device != "auto":
        return spec.device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def pick_dtype(spec: ModelSpec, device: str) -> Any:
    import torch

    if device == "cpu":  # half precision on CPU is slow or unsupported for many ops
        return torch.float32
    names = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    return names.get(spec.dtype, torch.float16)


# -- the cache -----------------------------------------------------------------------------------------
class ModelCache:
    """Resolves roles and names to specs, loads each model once, keeps it warm."""

    def __init__(
        self,
        models: dict[str, ModelSpec],
        roles: dict[str, str],
        profile: str,
        models_dir: Path,
        offline: bool = True,
    ) -> None:
        self.models = models
        self.roles = roles
        self.profile = profile
        self.models_dir = models_dir
        self.offline = offline
        self._loaded: dict[str, Loaded] = {}
        self._lock = threading.Lock()

    def spec_for(self, role: str, name: str | None = None, field: str = "model") -> ModelSpec:
        """The spec a call will use: the named one, else the role's, with the profile's tiny fallback."""
        if name is not None:
            if name not in self.models:
                known = ", ".join(sorted(n for n, s in self.models.items() if s.role == role))
                raise ToolError(f"{field}: unknown model {name!r}; models for {role}: {known}.")
            spec = self.models[name]
            if spec.role != role:
                raise ToolError(f"{field}: model {name!r} is a {spec.role}, not a {role}.")
            return self._available(spec)
        tiny = TINY_FOR_ROLE.get(role)  # roles such as "editor" have no tiny model
        default = self.roles.get(role, tiny)
        if default is None:
            raise ToolError(
                f"{field}: no {role} model is configured; set roles.{role} in limner.toml "
                f"(or LIMNER_{role.upper()}_MODEL) to a model of role {role}."
            )
        spec = self.models[default]
        if tiny and (
            self.profile == "tiny" or (self.profile == "auto" and not weights_present(spec, self.models_dir))
        ):
            return self.models[tiny]
        return self._available(spec)

    def _available(self, spec: ModelSpec) -> ModelSpec:
        """The spec itself when its weights can be loaded; a ToolError saying how to get them otherwise."""
        if spec.tiny_kind or weights_present(spec, self.models_dir) or not self.offline:
            return spec
        raise ToolError(how_to_get(spec, self.models_dir))

    def unavailable(self, role: str) -> str | None:
        """Why the role's model cannot be loaded now, without loading it; None when it can."""
        try:
            spec = self.spec_for(role)
        except ToolError as exc:
            return str(exc)
        if spec.tiny_kind or weights_present(spec, self.models_dir):
            return None
        return how_to_get(spec, self.models_dir)

    def describe(self) -> dict[str, str]:
        """Which model each role will use now; logged at start-up."""
        out = {}
        for role in TINY_FOR_ROLE:
            try:
                spec = self.spec_for(role)
            except ToolError:
                out[role] = f"{self.roles.get(role)} (weights missing: calls needing it will fail)"
                continue
            out[role] = f"{spec.name} ({TINY_LABEL}, offline)" if spec.tiny_kind else spec.name
        return out

    def is_loaded(self, name: str) -> bool:
        return name in self._loaded

    def get(self, role: str, name: str | None = None) -> Loaded:
        """Load (once) and return the model for `role`. Call from the model worker thread."""
        spec = self.spec_for(role, name)
        with self._lock:
            if spec.name not in self._loaded:
                self._loaded[spec.name] = self._load(spec)
            return self._loaded[spec.name]

    def _load(self, spec: ModelSpec) -> Loaded:
        source = spec.source
        if spec.tiny_kind:
            source = str(ensure_tiny(spec.tiny_kind, self.models_dir))
        elif spec.role == "lpips":
            source = str(lpips_folder(spec, self.models_dir))
        elif not weights_present(spec, self.models_dir) and self.offline:
            raise ToolError(how_to_get(spec))  # offline = false: from_pretrained downloads them
        for lora in spec.lora:  # before the base model loads: a missing file is known at once
            path = local_path(lora.source)
            if path is not None and not path.exists():
                raise ToolError(
                    f"model {spec.name!r}: its LoRA {lora.source!r} does not exist. Point the LoRA's `source` at "
                    "a folder or .safetensors file on this machine."
                )
        device = pick_device(spec)
        dtype = pick_dtype(spec, device)
        logger.info("loading %s from %s on %s", spec.name, source, device)
        loader = _LOADERS[spec.role]
        model = loader(spec, source, dtype, device, self.offline)
        return Loaded(spec=spec, model=model, device=device, tiny=spec.tiny_kind is not None)


def _load_diffusers(spec: ModelSpec, source: str, dtype: Any, device: str, offline: bool) -> Any:
    import diffusers

    auto = {"generator": "AutoPipelineForText2Image", "inpainter": "AutoPipelineForInpainting"}
    cls = getattr(diffusers, spec.pipeline or auto.get(spec.role, "DiffusionPipeline"))
    try:
        pipe = cls.from_pretrained(source, dtype=dtype, local_files_only=offline)
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
        processor = proc_cls.from_pretrained(source, local_files_only=offline)
    except OSError as exc:
        raise ToolError(f"{how_to_get(spec)} ({exc})") from None
    return model, processor


def _load_lpips(spec: ModelSpec, source: str, dtype: Any, device: str, offline: bool) -> Any:
    """LPIPS from the two files in its folder (tools/models/perceptual.py builds the network)."""
    import torch

    backbone, linear = lpips_files(Path(source))  # source is the resolved folder
    if not (backbone.is_file() and linear.is_file()):
        raise ToolError(_lpips_missing(spec, Path(source)))
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


_LOADERS: dict[str, Callable[[ModelSpec, str, Any, str, bool], Any]] = {
    "generator": _load_diffusers,
    "inpainter": _load_diffusers,
    "editor": _load_diffusers,
    "clip": _load_transformers,
    "vlm": _load_transformers,
    "lpips": _load_lpips,
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

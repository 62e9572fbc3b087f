"""Where a model's weights are on this disk, which device and dtype it loads with, and how much memory it
takes (measured once loaded, or estimated from its weights files)."""

from __future__ import annotations

import gc
import math
from pathlib import Path
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from tools.models.specs import ModelSpec

GIB = 2**30  # model memory is counted in GiB, as torch reports device memory ("GB" in settings and listings)


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
        return lpips_missing(spec, lpips_folder(spec, models_dir or Path(".")))
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


def lpips_missing(spec: ModelSpec, folder: Path) -> str:
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


# -- how much memory a model takes --------------------------------------------------------------------
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")


def measure(model: Any) -> int:
    """Bytes of every parameter and buffer of a loaded model's torch modules: a diffusers pipeline's module
    components, a transformers (model, processor) pair's model, or a module itself; shared tensors once."""
    import torch  # lazily: only loaded models are measured, and loading imported it

    parts = model if isinstance(model, tuple) else (model,)
    modules: list[torch.nn.Module] = []
    for part in parts:
        if isinstance(part, torch.nn.Module):
            modules.append(part)
        components = getattr(part, "components", None)  # a diffusers pipeline
        if isinstance(components, dict):
            modules += [c for c in components.values() if isinstance(c, torch.nn.Module)]
    seen: set[int] = set()
    total = 0
    for module in modules:
        for tensor in [*module.parameters(), *module.buffers()]:
            if id(tensor) not in seen:
                seen.add(id(tensor))
                total += tensor.numel() * tensor.element_size()
    return total


def dtype_name(model: Any) -> str:
    """The dtype the model's weights are in: a pipeline's or a module's `dtype`, "float32" etc."""
    first = model[0] if isinstance(model, tuple) else model
    dtype = getattr(first, "dtype", None)
    if dtype is None:  # a plain nn.Module (LPIPS): its first parameter's
        import torch  # lazily, as everywhere here

        if isinstance(first, torch.nn.Module):
            dtype = next((p.dtype for p in first.parameters()), None)
    return str(dtype).removeprefix("torch.") if dtype is not None else "unknown"


def weights_folder(spec: ModelSpec, models_dir: Path) -> Path | None:
    """The folder a spec's weights are in on this disk (a twin's only once built), else None."""
    if spec.tiny_kind:
        folder = models_dir / f"tiny-{spec.tiny_kind}"
        return folder if (folder / ".complete").is_file() else None
    if spec.role == "lpips":
        return lpips_folder(spec, models_dir)
    path = local_path(spec.source)
    if path is not None:
        return path if path.is_dir() else None
    if spec.source.count("/") != 1:
        return None
    from huggingface_hub import try_to_load_from_cache  # lazily, as in weights_present

    for marker in ("model_index.json", "config.json"):
        found = try_to_load_from_cache(spec.source, marker)
        if isinstance(found, str):
            return Path(found).parent  # the snapshot folder
    return None


def weights_bytes(folder: Path) -> int | None:
    """The size of the weights files under `folder` that from_pretrained reads: per folder the safetensors
    files (else the others), and of a file with an fp16 variant beside it only the plain one. None: none."""
    by_folder: dict[Path, list[Path]] = {}
    for path in folder.rglob("*"):
        if path.suffix in WEIGHT_SUFFIXES and path.is_file():
            by_folder.setdefault(path.parent, []).append(path)
    total = 0
    for files in by_folder.values():
        chosen = [f for f in files if f.suffix == ".safetensors"] or files
        chosen = [f for f in chosen if ".fp16." not in f.name] or chosen
        total += sum(f.stat().st_size for f in chosen)
    return total or None


def size_text(n: int) -> str:
    return f"{n / GIB:.2f} GB" if n >= GIB // 10 else f"{n / 2**20:.1f} MB"


def at_least_gb(n: int) -> str:
    """A model_memory_gb value that holds `n` bytes (rounded up, so it is never just short)."""
    digits = max(1, 2 - math.floor(math.log10(n / GIB))) if n else 1
    return f"{math.ceil(n / GIB * 10**digits) / 10**digits:g}"


def settle() -> None:
    """Every object alive now (the libraries a load imported, the model itself) leaves the garbage collector's
    generations for its permanent one (gc.freeze), so a later collection walks only what came after.
    A server with its models loaded holds ~580 K objects, nearly all from importing torch, transformers and
    diffusers: each full collection walked them all, ~240 ms with every thread stopped, at whatever moment
    of a call the allocations tripped it (2 ms once frozen; measured on the 2-core VM). Garbage is collected
    first, so none is frozen with them (a cycle from a load's temporaries could hold a copy of weights);
    that walks only what is not frozen yet: the new imports and model, once per load."""
    gc.collect()
    gc.freeze()


def release_memory() -> None:
    """Give the memory of dropped models back: collect now (the frozen objects too: a dropped model held in
    a reference cycle is among them), and empty CUDA's cache so other processes can use it."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    import torch  # lazily: only called after a model was loaded, so it is imported already

    if torch.cuda.is_available():
        torch.cuda.empty_cache()

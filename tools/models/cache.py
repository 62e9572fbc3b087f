"""Models: the only place that loads weights.

A model is a role (`generator`, `inpainter`, `editor`, `clip`, `vlm`, `lpips`, `detector`, `segmenter`) bound
to a `ModelSpec`: a hub id or local folder, dtype, device and optional LoRA adapters. `ModelCache.get` resolves
a role (or a named spec) to a loaded model once and keeps it warm, until it is unloaded: on request
(`unload`), after `idle_unload_s` unused, or to make room under the memory budget (least recently used first,
never a model a running job holds). The `tiny` profile builds tiny random-weight models from configs, saves
them under `LIMNER_HOME/models`, and loads them through the same `from_pretrained` path as real weights; every
result made with them says so.
"""

from __future__ import annotations

import gc
import logging
import math
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from tools.models import perceptual, processors
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


GIB = 2**30  # model memory is counted in GiB, as torch reports device memory ("GB" in settings and listings)


@dataclass
class Record:
    """A model in memory, and what the `models` tool lists about it."""

    loaded: Loaded
    dtype: str
    bytes: int  # measured: every parameter and buffer of its torch modules
    loaded_at: float
    last_used: float  # the end of the last job that held it, or its last `get` outside a job
    users: list[tuple[str, str]] = field(
        default_factory=list
    )  # (tool, job id) of each running job holding it


@dataclass(frozen=True)
class Freed:
    """A model that was unloaded (no reference to the model itself, so it can be collected)."""

    name: str
    role: str
    bytes: int


@dataclass
class _Serving:
    tool: str
    job_id: str
    held: set[str]


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


def _dtype_name(model: Any) -> str:
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


def _release_memory() -> None:
    """Give the memory of dropped models back: collect now, and empty CUDA's cache so other processes can
    use it."""
    gc.collect()
    import torch  # lazily: only called after a model was loaded, so it is imported already

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# -- the cache -----------------------------------------------------------------------------------------
class ModelCache:
    """Resolves roles and names to specs, loads each model once, keeps it warm until it is unloaded (on
    request, when idle, or for room under the memory budget), and knows which running job holds which."""

    def __init__(
        self,
        models: dict[str, ModelSpec],
        roles: dict[str, str],
        profile: str,
        models_dir: Path,
        offline: bool = True,
        idle_unload_s: float | None = None,
        memory_gb: float | None = None,
    ) -> None:
        self.models = models
        self.roles = roles
        self.profile = profile
        self.models_dir = models_dir
        self.offline = offline
        self.idle_unload_s = idle_unload_s
        self.memory_gb = memory_gb
        self._records: dict[str, Record] = {}
        self._measured: dict[str, int] = {}  # name -> bytes when last loaded: the next load's estimate
        self._budget: tuple[int | None, str] | None = None  # resolved once (may need torch)
        self._serving = threading.local()  # the job the current (model) thread runs: see `serving`
        self._lock = threading.Lock()  # held while loading, unloading or marking models in use

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
        if spec.tiny_kind:  # a twin bound to the role (LIMNER_VLM_MODEL=tiny-qwen2.5-vl-3b) is what was asked
            return spec
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
        return name in self._records

    def records(self) -> dict[str, Record]:
        """The models in memory now, by name (a copy: the cache may change it meanwhile)."""
        return dict(self._records)

    def remeasure(self, model: Any) -> None:
        """Measure a loaded model again after parts were added to it (an IP-Adapter and its image encoder)."""
        with self._lock:
            for name, record in self._records.items():
                if record.loaded.model is model:
                    record.bytes = self._measured[name] = measure(model)

    def get(self, role: str, name: str | None = None) -> Loaded:
        """Load (once) and return the model for `role`. Call from the model worker thread.

        Inside `serving` the model stays marked in use by that job until the job ends."""
        spec = self.spec_for(role, name)
        serving: _Serving | None = getattr(self._serving, "job", None)
        with self._lock:
            now = time.time()
            self._unload_idle(now, keep=spec.name)
            record = self._records.get(spec.name) or self._load_within_budget(spec)
            record.last_used = time.time()
            if serving is not None and spec.name not in serving.held:
                serving.held.add(spec.name)
                record.users.append((serving.tool, serving.job_id))
            return record.loaded

    @contextmanager
    def serving(self, tool: str, job_id: str) -> Iterator[None]:
        """Run one job's work in this block: every model `get` returns on this thread meanwhile is in use by
        the job until the block ends, so neither `unload`, the idle check nor the budget drops it mid-job.

        The runner wraps each job's work in it, so work functions only call `get`, and a model stays held
        for the whole job even where the work keeps it in a local variable after asking."""
        serving = _Serving(tool, job_id, set())
        self._serving.job = serving
        try:
            yield
        finally:
            self._serving.job = None
            with self._lock:
                now = time.time()
                for name in serving.held:
                    record = self._records.get(name)
                    if record is not None and (tool, job_id) in record.users:
                        record.users.remove((tool, job_id))
                        record.last_used = now  # idle time counts from the job's end

    # -- unloading --------------------------------------------------------------------------------------
    def unload(self, role_or_name: str) -> list[Freed]:
        """Unload a named model, or every loaded model of a role; what was freed (empty: nothing was loaded).

        A model a running job holds is refused with a ToolError naming the job; nothing is unloaded then."""
        roles = sorted({*self.roles, *(spec.role for spec in self.models.values())})
        if role_or_name not in self.models and role_or_name not in roles:
            raise ToolError(
                f"role_or_model: no role or model {role_or_name!r}; roles: {', '.join(roles)}; models: "
                f"{', '.join(sorted(self.models))}. Call models(action='list') to see what is loaded."
            )
        with self._lock:
            names = [
                name
                for name, record in self._records.items()
                if role_or_name in (name, record.loaded.spec.role)
            ]
            for name in names:
                if self._records[name].users:
                    tool, job_id = self._records[name].users[0]
                    raise ToolError(
                        f"role_or_model: model {name!r} is running {tool} job {job_id!r}; it cannot be unloaded "
                        f"mid-job. Retry after it finishes (jobs(action='wait', job_id='{job_id}')) or cancel it "
                        f"(jobs(action='cancel', job_id='{job_id}')), then unload again."
                    )
            freed = [self._drop(name, "on request") for name in names]
            if freed:
                _release_memory()
        return freed

    def unload_idle(self) -> list[Freed]:
        """Unload every model unused for idle_unload_s (none held by a job); the server calls it periodically.
        Skipped while a model loads (the loading `get` checks again itself)."""
        if self.idle_unload_s is None or not self._lock.acquire(blocking=False):
            return []
        try:
            return self._unload_idle(time.time())
        finally:
            self._lock.release()

    def _unload_idle(self, now: float, keep: str | None = None) -> list[Freed]:
        """With the lock held: drop the models idle longer than idle_unload_s (cheap when none is)."""
        if self.idle_unload_s is None:
            return []
        idle_s = self.idle_unload_s
        stale = [
            name
            for name, record in self._records.items()
            if name != keep and not record.users and now - record.last_used >= idle_s
        ]
        freed = [self._drop(name, f"idle for more than {idle_s:g} s") for name in stale]
        if freed:
            _release_memory()
        return freed

    def _drop(self, name: str, why: str) -> Freed:
        """With the lock held: forget a model (the caller collects the memory once after a batch)."""
        record = self._records.pop(name)
        freed = Freed(name=name, role=record.loaded.spec.role, bytes=record.bytes)
        logger.info("unloaded %s (%s): %s", name, size_text(record.bytes), why)
        return freed

    # -- the memory budget ----------------------------------------------------------------------------
    def budget(self) -> tuple[int | None, str]:
        """(bytes every loaded model together may take, or None for no budget; where that figure comes from)."""
        if self._budget is None:
            if self.memory_gb is not None:
                self._budget = (int(self.memory_gb * GIB), "model_memory_gb")
            else:
                import torch  # lazily: seconds to import; models that were loaded imported it already

                if torch.cuda.is_available():
                    index = torch.cuda.current_device()
                    props = torch.cuda.get_device_properties(index)
                    self._budget = (props.total_memory, f"the memory of cuda:{index} ({props.name})")
                else:
                    self._budget = (None, "none: model_memory_gb is not set and there is no CUDA device")
        return self._budget

    def estimate(self, spec: ModelSpec) -> tuple[int | None, str]:
        """(bytes the model will take once loaded, how that was found) before loading it: its size when this
        cache last loaded it, else its spec's vram_gb, else the size of its weights files on disk."""
        if spec.name in self._measured:
            return self._measured[spec.name], "measured when it was last loaded"
        if spec.vram_gb is not None:
            return int(spec.vram_gb * GIB), "its spec's vram_gb"
        if spec.tiny_kind:
            folder: Path | None = ensure_tiny(
                spec.tiny_kind, self.models_dir
            )  # float32 on disk and in memory
        else:
            folder = weights_folder(spec, self.models_dir)
        size = weights_bytes(folder) if folder is not None else None
        return (size, "the size of its weights files") if size else (None, "unknown")

    def _load_within_budget(self, spec: ModelSpec) -> Record:
        """With the lock held: make room (least recently used first), load, measure, and check again with the
        measured size (an estimate from disk may be off: fp16 files loaded as float32)."""
        budget, _ = self.budget()
        if budget is not None:
            need, how = self.estimate(spec)
            if need is not None:
                self._make_room(spec, need, how)
        loaded = self._load(spec)
        now = time.time()
        record = Record(
            loaded, _dtype_name(loaded.model), measure(loaded.model), loaded_at=now, last_used=now
        )
        self._records[spec.name] = record
        self._measured[spec.name] = record.bytes
        if budget is not None:
            try:
                self._make_room(spec, record.bytes, "measured after loading")
            except ToolError:
                self._drop(spec.name, "over the memory budget")
                del record, loaded
                _release_memory()
                raise
        return record

    def _make_room(self, spec: ModelSpec, need: int, how: str) -> None:
        """With the lock held: unload models no job holds, least recently used first, until `need` more bytes
        fit the budget; a ToolError when the model cannot fit even alone or beside the models jobs hold."""
        budget, source = self.budget()
        assert budget is not None
        where = f"the model memory budget of {size_text(budget)} ({source})"
        setting = "model_memory_gb (LIMNER_MODEL_MEMORY_GB, --model-memory-gb)"
        if need > budget:
            raise ToolError(
                f"model {spec.name!r} ({spec.role}) needs about {size_text(need)} ({how}), more than {where}. "
                f"Raise {setting} to at least {at_least_gb(need)}, or use a smaller {spec.role} model."
            )
        others = [name for name in self._records if name != spec.name]
        used = sum(self._records[name].bytes for name in others)
        freed = []
        for name in sorted(others, key=lambda n: self._records[n].last_used):
            if used + need <= budget:
                break
            if not self._records[name].users:
                used -= self._records[name].bytes
                freed.append(self._drop(name, f"least recently used: room for {spec.name} under the budget"))
        if freed:
            _release_memory()
        if used + need > budget:
            held = ", ".join(
                f"{n} ({size_text(r.bytes)})" for n, r in self._records.items() if n != spec.name
            )
            raise ToolError(
                f"model {spec.name!r} ({spec.role}) needs about {size_text(need)} ({how}); beside the models the "
                f"running job holds ({held}) that exceeds {where}. Raise {setting} to at least "
                f"{at_least_gb(need + used)}, or use smaller models."
            )

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

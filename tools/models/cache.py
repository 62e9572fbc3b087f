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

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp.server.mcpserver.exceptions import ToolError

from tools.models.loaders import LOADERS, ensure_tiny
from tools.models.specs import TINY_FOR_ROLE, TINY_LABEL, ModelSpec, spec_label
from tools.models.weights import (
    GIB,
    at_least_gb,
    dtype_name,
    how_to_get,
    local_path,
    lpips_folder,
    measure,
    pick_device,
    pick_dtype,
    release_memory,
    settle,
    size_text,
    weights_bytes,
    weights_folder,
    weights_present,
)

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
                release_memory()
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
            release_memory()
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
        settle()  # the model and what its load imported are long-lived: out of the collector's walks
        now = time.time()
        record = Record(loaded, dtype_name(loaded.model), measure(loaded.model), loaded_at=now, last_used=now)
        self._records[spec.name] = record
        self._measured[spec.name] = record.bytes
        if budget is not None:
            try:
                self._make_room(spec, record.bytes, "measured after loading")
            except ToolError:
                self._drop(spec.name, "over the memory budget")
                del record, loaded
                release_memory()
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
            release_memory()
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
        loader = LOADERS[spec.role]
        model = loader(spec, source, dtype, device, self.offline)
        return Loaded(spec=spec, model=model, device=device, tiny=spec.tiny_kind is not None)

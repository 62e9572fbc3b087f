"""What the `models` tool and `limner models` show and do: which model serves each role, every known model,
what is loaded and how much memory it takes, and unloading.

The listing reads the cache (tools/models/cache.py) without loading anything; unloading is the cache's. With
runner = "ray" the models live on the cluster: a runner that is `RemoteModels` adds its deployments (state,
replicas, what each replica holds) and unloads on their replicas too (tools/models/ray_deploy.py).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

from mcp.server.mcpserver.exceptions import ToolError
from pydantic import BaseModel, Field

from tools.models.cache import Freed, ModelCache, Record
from tools.models.specs import ModelSpec
from tools.models.weights import GIB, weights_folder, weights_present

# the class each loader in loaders.py picks when a spec names none
AUTO_CLASSES = {
    "generator": "AutoPipelineForText2Image",
    "inpainter": "AutoPipelineForInpainting",
    "editor": "DiffusionPipeline",
    "clip": "AutoModel",
    "vlm": "AutoModelForImageTextToText",
    "lpips": "LPIPS (tools/models/perceptual.py)",
}


class RoleModel(BaseModel):
    role: str
    model: str = Field(
        description="The model bound to the role now (a tiny twin where the profile picks it)."
    )
    problem: str | None = Field(
        default=None, description="Why the role's model cannot be loaded now (its weights are missing)."
    )
    tiny: bool = Field(description="A tiny random-weight twin: its output is noise.")
    weights_present: bool = Field(
        description="Its weights are on this disk (a twin not built yet is built offline on first use)."
    )
    loaded: bool
    device: str | None = None
    dtype: str | None = None
    memory_gb: float | None = Field(default=None, description="Measured from its parameters and buffers.")
    memory_bytes: int | None = None
    loaded_at: str | None = Field(default=None, description="When it was loaded (UTC).")
    last_used: str | None = Field(default=None, description="When a job last finished with it (UTC).")
    idle_s: float | None = Field(default=None, description="Seconds since it was last used.")
    in_use_by: list[str] = Field(default_factory=list, description="Running jobs holding it: 'tool job_id'.")


class KnownModel(BaseModel):
    name: str
    role: str
    source: str = Field(description="Hub id, local folder, or tiny:<kind> for a twin built from a config.")
    pipeline: str = Field(description="The diffusers/transformers class it loads with.")
    tiny: bool
    weights_present: bool
    loaded: bool
    memory_gb: float | None = Field(default=None, description="Measured, when loaded.")
    vram_gb: float | None = Field(default=None, description="Its spec's approximate GPU memory need.")


class FreedModel(BaseModel):
    name: str
    role: str
    memory_gb: float
    memory_bytes: int
    replica: str | None = Field(default=None, description="runner = ray: the replica that freed it.")


class RemoteModel(BaseModel):
    name: str
    role: str
    device: str | None = None
    memory_gb: float
    in_use_by: list[str] = Field(default_factory=list, description="Running jobs holding it: 'tool job_id'.")


class ReplicaState(BaseModel):
    replica_id: str
    state: str = Field(description="Serve's replica state: STARTING, RUNNING, STOPPING, ...")
    node_ip: str | None = None
    loaded: list[RemoteModel] | None = Field(
        default=None, description="What it holds loaded, as it last reported; null: no report yet."
    )
    reported_s_ago: float | None = None


class DeploymentState(BaseModel):
    role: str = Field(description="The deployment's role: generator, inpainter, editor, judge or detector.")
    app: str = Field(description="Its Serve application.")
    model_roles: list[str] = Field(description="The model roles its replicas load.")
    status: str = Field(
        description="Serve's deployment status (HEALTHY, UPDATING, ...); NOT_DEPLOYED: no call yet."
    )
    message: str | None = None
    target_replicas: int | None = None
    num_gpus: float | None = Field(default=None, description="GPUs per replica.")
    num_cpus: float | None = Field(default=None, description="CPUs per replica.")
    autoscaling: dict[str, float] | None = Field(
        default=None, description="min_replicas, max_replicas, target_ongoing_requests; null: fixed replicas."
    )
    replicas: list[ReplicaState] = Field(default_factory=list)


class ClusterModels(BaseModel):
    address: str
    message: str
    error: str | None = Field(default=None, description="Why the cluster could not be asked.")
    deployments: list[DeploymentState] = Field(default_factory=list)


@runtime_checkable
class RemoteModels(Protocol):
    """A runner whose models live elsewhere (the Ray runner)."""

    def cluster_models(self) -> ClusterModels: ...

    def unload_remote(self, role_or_model: str) -> tuple[list[FreedModel], str]: ...


class ModelsResult(BaseModel):
    roles: list[RoleModel] = Field(description="Per role, the model a call would use now.")
    models: list[KnownModel] = Field(
        description="Every model spec the server knows: presets, twins, limner.toml."
    )
    budget_gb: float | None = Field(
        description="GB (2**30 bytes) all loaded models may take together; null: no budget."
    )
    budget_source: str = Field(description="Where the budget comes from.")
    used_gb: float = Field(description="The measured memory of every loaded model together.")
    used_bytes: int
    idle_unload_s: float | None = Field(description="Models unused this long are unloaded; null: never.")
    unloaded: list[FreedModel] | None = Field(default=None, description="action='unload': what was freed.")
    freed_gb: float | None = Field(default=None, description="action='unload': the memory freed.")
    message: str | None = None
    cluster: ClusterModels | None = Field(
        default=None, description="runner = ray: the cluster's deployments, where the models live."
    )


def answer(
    cache: ModelCache,
    action: Literal["list", "unload"],
    role_or_model: str | None,
    remote: RemoteModels | None = None,
) -> ModelsResult:
    """The `models` tool: the listing, or unload then the listing after it (on the cluster's replicas too)."""
    if action == "list":
        if role_or_model is not None:
            raise ToolError(
                f"role_or_model: {role_or_model!r} is only for action='unload'; action='list' lists every role "
                "and model. Leave it out, or pass action='unload' to unload it."
            )
        result = listing(cache)
        return result if remote is None else result.model_copy(update={"cluster": remote.cluster_models()})
    if not role_or_model:
        loaded = ", ".join(cache.records()) or "none"
        raise ToolError(
            f"role_or_model: required for action='unload': a role ({', '.join(cache.roles)}) or a model name; "
            f"loaded now: {loaded}."
        )
    if remote is None:
        return unload(cache, role_or_model)
    freed, message = remote.unload_remote(role_or_model)  # a ToolError for a name no deployment loads
    known = role_or_model in cache.models or role_or_model in {
        *cache.roles,
        *(s.role for s in cache.models.values()),
    }
    local = (
        unload(cache, role_or_model) if known else listing(cache)
    )  # a deployment name ("judge") is not local
    return local.model_copy(
        update={
            "unloaded": [*(local.unloaded or []), *freed],
            "freed_gb": _gb(sum(f.memory_bytes for f in [*(local.unloaded or []), *freed])),
            "message": message,
            "cluster": remote.cluster_models(),
        }
    )


def unload(cache: ModelCache, role_or_model: str) -> ModelsResult:
    """Unload a model or a role's loaded models. Nothing loaded is an answer, not an error: the call is
    idempotent (a retry after a lost answer, or an unload after the idle unload, leaves the same state)."""
    freed = cache.unload(role_or_model)
    total = sum(f.bytes for f in freed)
    if freed:
        message = f"unloaded {', '.join(f.name for f in freed)}: {_gb(total)} GB freed."
    else:
        message = f"nothing was loaded for {role_or_model!r}; nothing was freed."
    return listing(cache).model_copy(
        update={"unloaded": [_freed(f) for f in freed], "freed_gb": _gb(total), "message": message}
    )


def listing(cache: ModelCache) -> ModelsResult:
    """Every role and model, what is loaded, the budget; loads nothing (a twin not built is not built)."""
    records = cache.records()
    now = time.time()
    budget, source = cache.budget()
    used = sum(r.bytes for r in records.values())
    return ModelsResult(
        roles=[_role(cache, role, records, now) for role in cache.roles],
        models=[_known(cache, spec, records.get(name)) for name, spec in sorted(cache.models.items())],
        budget_gb=None if budget is None else _gb(budget),
        budget_source=source,
        used_gb=_gb(used),
        used_bytes=used,
        idle_unload_s=cache.idle_unload_s,
    )


def _role(cache: ModelCache, role: str, records: dict[str, Record], now: float) -> RoleModel:
    try:
        spec, problem = cache.spec_for(role), None
    except ToolError as exc:  # its weights are missing: list what it is bound to, and why it cannot load
        spec, problem = cache.models[cache.roles[role]], str(exc)
    record = records.get(spec.name)
    entry = RoleModel(
        role=role,
        model=spec.name,
        problem=problem,
        tiny=spec.tiny_kind is not None,
        weights_present=_present(cache, spec),
        loaded=record is not None,
    )
    if record is None:
        return entry
    return entry.model_copy(
        update={
            "device": record.loaded.device,
            "dtype": record.dtype,
            "memory_gb": _gb(record.bytes),
            "memory_bytes": record.bytes,
            "loaded_at": _when(record.loaded_at),
            "last_used": _when(record.last_used),
            "idle_s": round(now - record.last_used, 3),
            "in_use_by": [f"{tool} {job_id}" for tool, job_id in record.users],
        }
    )


def _known(cache: ModelCache, spec: ModelSpec, record: Record | None) -> KnownModel:
    return KnownModel(
        name=spec.name,
        role=spec.role,
        source=spec.source,
        pipeline=spec.pipeline or AUTO_CLASSES.get(spec.role, "DiffusionPipeline"),
        tiny=spec.tiny_kind is not None,
        weights_present=_present(cache, spec),
        loaded=record is not None,
        memory_gb=None if record is None else _gb(record.bytes),
        vram_gb=spec.vram_gb,
    )


def _present(cache: ModelCache, spec: ModelSpec) -> bool:
    if spec.tiny_kind:  # weights_present says yes for every twin (it can be built); here: is it built
        return weights_folder(spec, cache.models_dir) is not None
    return weights_present(spec, cache.models_dir)


def _freed(freed: Freed) -> FreedModel:
    return FreedModel(name=freed.name, role=freed.role, memory_gb=_gb(freed.bytes), memory_bytes=freed.bytes)


def _gb(n: int) -> float:
    return round(n / GIB, 6)  # a tiny twin is a few MB: 6 places keep it visible


def _when(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")

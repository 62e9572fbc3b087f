"""Where the role deployments go and what they hold: their Ray actor options (GPUs, CPUs), replicas or
autoscaling, the check that the cluster can place them, deploying, and what the `models` tool shows of them
(state and replicas from Serve, loaded models from the board) and unloading on their replicas.

Imported only when `runner = "ray"`, from ray_runner.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import ray
from mcp.server.mcpserver.exceptions import ToolError
from ray import serve
from ray.serve.context import _get_global_client

from tools.models.inventory import ClusterModels, DeploymentState, FreedModel, RemoteModel, ReplicaState
from tools.models.specs import ModelSpec

logger = logging.getLogger("limner.ray")

APP_PREFIX = "limner-"  # Serve application per role: limner-generator, limner-inpainter, ...
# a deployment per role a tool submits to, and the model roles its replicas load
DEPLOYMENT_ROLES: dict[str, tuple[str, ...]] = {
    "generator": ("generator", "upscaler"),  # generate (variations, references); upscale
    # refine_region (a named region is located first); generate with a foreground (cut out, painted around);
    # outpaint
    "inpainter": ("inpainter", "detector", "segmenter"),
    "editor": ("editor", "detector", "segmenter"),  # refine_region's editor backend, a named region too
    "judge": ("clip", "vlm", "lpips", "detector", "segmenter"),
    "detector": ("detector", "segmenter"),  # locate
}
ROLES = tuple(DEPLOYMENT_ROLES)
# GPUs a replica asks for where neither ray_num_gpus nor a spec's gpu_fraction says (and the cluster has GPUs)
DEFAULT_GPUS = {"generator": 1.0, "inpainter": 1.0, "editor": 1.0, "judge": 0.25, "detector": 0.25}
DEPLOY_TIMEOUT_S = 120.0  # a deployment not running by then cannot be placed (or keeps failing)
AUTOSCALER_DEPLOY_TIMEOUT_S = 900.0  # with ray_autoscaler: a GPU node may take minutes to start
UNLOAD_WAIT_S = 10.0  # how long an unload waits for every replica to answer (they tick every 0.5 s)


@dataclass(frozen=True)
class RayOptions:
    """Where and how the deployments run; from settings."""

    address: str  # anything ray.init takes: "auto", "host:port", "ray://host:10001"
    namespace: str = "limner"
    num_gpus: dict[str, float] = field(default_factory=dict)  # per role: ray_num_gpus
    num_cpus: float = 0.5  # per replica; Serve's own actors need a little too
    replicas: int = 1
    max_replicas: int | None = None  # set: autoscaling between min_replicas and it
    min_replicas: int = 1
    target_ongoing_requests: float = 1.0
    lease_s: float = 30.0
    autoscaler: bool = False  # the cluster starts nodes on demand: no check against the nodes up now


def deployment_options(
    role: str, options: RayOptions, spec_for: Callable[[str], ModelSpec | None]
) -> dict[str, Any]:
    """The role's Serve deployment options; a ToolError where no node of the cluster can hold a replica.
    `spec_for(model_role)`: the spec a call would use for that role (the profile's twin, say), or None.

    The check counts the nodes alive now. On a cluster that starts nodes on demand (ray_autoscaler: the Ray
    autoscaler, KubeRay with GPU workers scaled to zero) nothing is checked, and roles get GPUs by default
    even when no GPU node is up: the autoscaler starts one for the replica's request."""
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    has_gpus = options.autoscaler or any(n.get("GPU", 0) for n in nodes)
    gpus, source = _gpus(role, options, spec_for, has_gpus)
    asks = [("GPU", gpus, source), ("CPU", options.num_cpus, "ray_num_cpus")]
    for resource, asked, how in [] if options.autoscaler else asks:
        total = sum(float(n.get(resource, 0)) for n in nodes)
        largest = max((float(n.get(resource, 0)) for n in nodes), default=0.0)
        if asked > largest:
            raise ToolError(
                f"runner: the {role} deployment asks for {asked:g} {resource}(s) per replica ({how}) but the "
                f"cluster at {options.address} has {total:g} (the largest node {largest:g}); a replica runs on "
                f"one node. Add a worker with more (`ray start --address HEAD:PORT --num-gpus N` on a GPU "
                f"machine) or lower {how}; on a cluster that starts nodes on demand, set ray_autoscaler=true."
            )
    out: dict[str, Any] = {"ray_actor_options": {"num_cpus": options.num_cpus, "num_gpus": gpus}}
    if options.max_replicas is None:
        out["num_replicas"] = options.replicas
    else:
        out["autoscaling_config"] = {
            "min_replicas": options.min_replicas,
            "max_replicas": options.max_replicas,
            "target_ongoing_requests": options.target_ongoing_requests,
        }
    return out


def _gpus(
    role: str,
    options: RayOptions,
    spec_for: Callable[[str], ModelSpec | None],
    cluster_has_gpus: bool,
) -> tuple[float, str]:
    """GPUs per replica and where the number comes from: ray_num_gpus, else the largest gpu_fraction of the
    models the deployment's roles use, else the default (0 on a cluster without GPUs)."""
    if role in options.num_gpus:
        return options.num_gpus[role], f"ray_num_gpus.{role}"
    fractions = [
        (spec.gpu_fraction, spec.name)
        for model_role in DEPLOYMENT_ROLES[role]
        if (spec := spec_for(model_role)) is not None and spec.gpu_fraction is not None
    ]
    if fractions:
        fraction, name = max(fractions)
        return fraction, f"gpu_fraction of model {name}"
    return (DEFAULT_GPUS[role] if cluster_has_gpus else 0.0), "the default"


def deploy(
    role: str,
    worker: Any,
    init_args: tuple,
    options: dict[str, Any],
    address: str,
    timeout_s: float = DEPLOY_TIMEOUT_S,
) -> None:
    """Deploy the role's application and wait until it runs (or cannot: a clear error, not a hang)."""
    app = APP_PREFIX + role
    deployment = worker.options(name=f"{role}-worker", **options)
    logger.info("deploying %s on %s (%s)", app, address, options)
    serve._run(deployment.bind(*init_args), name=app, route_prefix=None, _blocking=False)
    deadline = time.monotonic() + timeout_s
    while (status := app_status(app)) != "RUNNING":
        if status in ("DEPLOY_FAILED", "UNHEALTHY") or time.monotonic() > deadline:
            application = serve.status().applications.get(app)
            message = "" if application is None else str(application.message)[:300]
            raise ToolError(
                f"runner: the {role} deployment is {status or 'not running'} after {timeout_s:g} s on "
                f"{address} ({message or 'no message'}); check `serve status` and `ray status`: it may need "
                "resources the cluster does not have."
            )
        time.sleep(0.2)


def app_status(app: str) -> str | None:
    application = serve.status().applications.get(app)
    return None if application is None else str(getattr(application.status, "value", application.status))


# -- what the models tool shows and does -------------------------------------------------------------------
def cluster_models(address: str, board: Any) -> ClusterModels:
    """Each role's deployment: its state, replicas, options and what each replica reported holding."""
    applications = _details().get("applications", {})
    deployments = []
    for role in ROLES:
        application = applications.get(APP_PREFIX + role)
        if application is None:
            deployments.append(
                DeploymentState(
                    role=role,
                    app=APP_PREFIX + role,
                    model_roles=list(DEPLOYMENT_ROLES[role]),
                    status="NOT_DEPLOYED",
                )
            )
            continue
        details = next(iter(application.get("deployments", {}).values()), {})
        config = details.get("deployment_config", {})
        reports: dict[str, dict[str, Any]] = ray.get(board.reports_of.remote(role), timeout=10)
        replicas = details.get("replicas", [])
        live = {r["replica_id"] for r in replicas}
        if gone := [replica for replica in reports if replica not in live]:
            board.forget.remote(gone)
        deployments.append(
            DeploymentState(
                role=role,
                app=APP_PREFIX + role,
                model_roles=list(DEPLOYMENT_ROLES[role]),
                status=_name(details.get("status", application.get("status", ""))),
                message=str(details.get("message") or application.get("message") or "") or None,
                target_replicas=details.get("target_num_replicas"),
                num_gpus=float(config.get("ray_actor_options", {}).get("num_gpus", 0) or 0),
                num_cpus=float(config.get("ray_actor_options", {}).get("num_cpus", 0) or 0),
                autoscaling=_autoscaling(config.get("autoscaling_config")),
                replicas=[_replica(r, reports.get(r["replica_id"])) for r in replicas],
            )
        )
    return ClusterModels(
        address=address,
        message=f"runner = ray: model work runs on the Ray cluster at {address}, and the models live in its "
        "replicas (`deployments`); `roles` and `models` above say which model each role is bound to, and "
        "nothing is loaded in this process.",
        deployments=deployments,
    )


def unload_remote(target: str, models: dict[str, ModelSpec], board: Any) -> tuple[list[FreedModel], str]:
    """Post an unload order to the deployments whose replicas can hold `target` (a model, a model role or a
    deployment), wait for each live replica's answer; what they freed and a sentence saying how it went."""
    if target in DEPLOYMENT_ROLES and target not in {spec.role for spec in models.values()}:
        deployments, names = [target], list(DEPLOYMENT_ROLES[target])  # "judge": every model it loads
    else:
        role = models[target].role if target in models else target
        deployments = [name for name, model_roles in DEPLOYMENT_ROLES.items() if role in model_roles]
        names = [target]
    if not deployments:
        raise ToolError(
            f"role_or_model: no Ray deployment loads {target!r}; deployments: {', '.join(ROLES)}, model roles: "
            f"{', '.join(sorted({r for rs in DEPLOYMENT_ROLES.values() for r in rs}))}, or a model name."
        )
    applications = _details().get("applications", {})
    waiting = {
        (deployment, replica["replica_id"])
        for deployment in deployments
        for details in applications.get(APP_PREFIX + deployment, {}).get("deployments", {}).values()
        for replica in details.get("replicas", [])
        if replica.get("state") == "RUNNING"
    }
    seq = ray.get(board.order.remote(deployments, names), timeout=10)
    freed: list[FreedModel] = []
    refused: list[str] = []
    deadline = time.monotonic() + UNLOAD_WAIT_S
    while waiting and time.monotonic() < deadline:
        for deployment in {d for d, _ in waiting}:
            reports: dict[str, dict[str, Any]] = ray.get(board.reports_of.remote(deployment), timeout=10)
            for key in [k for k in waiting if k[0] == deployment]:
                report = reports.get(key[1])
                if report is None or report["seen"] < seq:
                    continue
                waiting.discard(key)
                answer = report.get("answers", {}).get(seq, {})
                freed += [FreedModel(**f, replica=key[1]) for f in answer.get("freed", [])]
                refused += [f"replica {key[1]}: {answer['error']}"] if answer.get("error") else []
        if waiting:
            time.sleep(0.1)
    where = ", ".join(APP_PREFIX + d for d in deployments)
    notes = [f"unload of {target!r} sent to the replicas of {where}"]
    notes += [f"{len(freed)} model(s) freed" if freed else "nothing was loaded there; nothing was freed"]
    notes += refused
    if waiting:
        notes.append(
            f"no answer in {UNLOAD_WAIT_S:g} s from replica(s) {', '.join(r for _, r in sorted(waiting))}: "
            "they act on it at their next tick; list again to see"
        )
    return freed, "; ".join(notes) + "."


def _details() -> dict[str, Any]:
    """Serve's instance details (what `serve status` and the dashboard read): the replicas, by id."""
    client = _get_global_client(raise_if_no_controller_running=False)
    return client.get_serve_details() if client is not None else {}


def _name(value: Any) -> str:
    """A Serve status enum (or its string) as its plain name: RUNNING, HEALTHY."""
    return str(getattr(value, "value", value))


def _autoscaling(config: dict[str, Any] | None) -> dict[str, float] | None:
    if not config:
        return None
    return {
        key: config[key]
        for key in ("min_replicas", "max_replicas", "target_ongoing_requests")
        if key in config
    }


def _replica(details: dict[str, Any], report: dict[str, Any] | None) -> ReplicaState:
    return ReplicaState(
        replica_id=details["replica_id"],
        state=_name(details.get("state", "")),
        node_ip=details.get("node_ip"),
        loaded=None if report is None else [RemoteModel(**m) for m in report.get("loaded", [])],
        reported_s_ago=None if report is None else round(report["age_s"], 3),
    )

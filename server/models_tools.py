"""The `models` tool: wiring only; the listing and unloading are tools/models/inventory.py."""

from __future__ import annotations

from typing import Annotated, Literal

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp_types import ToolAnnotations
from pydantic import Field

from server.context import app_context
from tools.models import inventory
from tools.models.inventory import ModelsResult, RemoteModels


def register(server: MCPServer) -> None:
    @server.tool(
        annotations=ToolAnnotations(
            read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False
        )
    )
    async def models(
        ctx: Context,
        action: Annotated[
            Literal["list", "unload"],
            Field(description="list: roles, models, what is loaded, memory; unload: free a model's memory."),
        ] = "list",
        role_or_model: Annotated[
            str | None,
            Field(
                description="For unload: a model name (unloads it) or a role such as 'generator' (unloads every "
                "loaded model of that role); with a Ray runner also a deployment such as 'judge'."
            ),
        ] = None,
    ) -> ModelsResult:
        """List the models (which serves each role, loaded or not, device, memory) or unload one. With a Ray
        runner the models live on the cluster: `cluster` lists each deployment, its replicas and what they hold,
        and unload acts on those replicas.

        Call it to see which model generate, refine_region and judge will use (a tiny twin's output is noise),
        or to free memory before loading a bigger model: action='unload' with a role or model name. A model a
        running job holds is not unloaded (wait for the job with jobs, or cancel it); unloading what is not
        loaded frees nothing and is not an error. Models load again on their next use.
        """
        app = app_context(ctx)
        remote = app.runner if isinstance(app.runner, RemoteModels) else None  # runner = ray: the cluster's
        # off the event loop: unloading waits for a model that is loading (or for the replicas), listing reads
        # the disk (or asks the cluster)
        return await anyio.to_thread.run_sync(inventory.answer, app.models, action, role_or_model, remote)

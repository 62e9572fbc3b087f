"""Model work on a real Ray cluster on loopback (runner = "ray"), driven through the MCP client as a host does.

One head per test session (it costs ~1 GB and seconds to start), started with `ray start --head` in its own
process group and stopped with it. Tiny models on CPU."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import numpy as np
import pytest
from mcp import Client
from PIL import Image
from skimage import data

from server.app import build_server
from server.settings import SettingsError
from tests.conftest import REPO, connect, error_text, server_env, structured
from tools.core.images import ImageStore
from tools.models.specs import ModelSpec

# Before Ray is imported: no call may start a local cluster of its own after the fixture's driver shut down
# (Ray's auto-init; Serve's handle threads call on after ray.shutdown, and a new local cluster would write a
# token to ~/.ray/auth_token that switches every later head on this machine to token auth), and no token auth
# for the loopback cluster of the tests, whatever ~/.ray holds.
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
ray = pytest.importorskip("ray", reason='the Ray runner needs the extra: pip install "limner[ray]"')
serve = pytest.importorskip("ray.serve")
pytestmark = [pytest.mark.slow, pytest.mark.anyio]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Ray head on 127.0.0.1 with 2 CPUs; its address."""
    port = free_port()
    temp = Path("/tmp") / f"ray-limner-{os.getpid()}"  # Ray's socket paths must stay short
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # a loaded shared machine takes more than a minute at times
        while time.monotonic() < deadline:
            status = subprocess.run(
                [str(ray_cli), "status", f"--address={address}"], capture_output=True, timeout=60
            )
            if status.returncode == 0:
                break
            assert head.poll() is None, "the Ray head exited at start"
            time.sleep(1)
        else:
            raise AssertionError("the Ray head did not come up in 180 s")
        yield address
    finally:  # this process's driver first, then the cluster's processes (raylet, GCS, workers)
        ray.shutdown()
        subprocess.run([str(ray_cli), "stop", "--force"], capture_output=True, timeout=60)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(30)


@pytest.fixture
def ray_settings(make_settings, ray_head):
    return make_settings(runner="ray", ray_address=ray_head)


def photo(folder: Path, side: int = 64) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"astronaut-{side}.png"
    Image.fromarray(data.astronaut()).resize((side, side)).save(path)
    return str(path)


async def test_generate_on_ray_streams_progress_and_makes_the_local_runners_pixels(
    make_settings, ray_settings
):
    args = {"prompt": "a red chair", "seed": 11, "n": 2, "steps": 3}
    async with connect(make_settings()) as client:
        local = structured(await client.call_tool("generate", args))
    steps: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        steps.append(progress)

    async with connect(ray_settings) as client:
        remote = structured(await client.call_tool("generate", args, progress_callback=on_progress))
        listed = structured(await client.call_tool("jobs", {"action": "list"}))["jobs"]
    assert [c["id"] for c in remote["candidates"]] == [c["id"] for c in local["candidates"]]  # same pixels
    assert steps == [1, 2, 3]
    assert remote["tiny"] is True and remote["timings"]["denoise"] > 0
    assert [j["status"] for j in listed] == ["done"]


async def test_refine_region_and_judge_run_on_ray_and_keep_every_pixel_outside_the_blend_mask(ray_settings):
    image = photo(ray_settings.home)
    async with connect(ray_settings) as client:
        out = structured(
            await client.call_tool(
                "refine_region", {"image": image, "prompt": "a patch", "bbox": [16, 16, 40, 40], "seed": 3}
            )
        )
        judged = structured(
            await client.call_tool(
                "judge", {"images": [out["image"]["id"], image], "prompt": "an astronaut, a flag"}
            )
        )
    assert out["metrics"]["changed_outside_blend"] == 0 and out["tiny"] is True
    assert len(judged["judgements"]) == 2 and judged["tiny"] is True
    store = ImageStore(ray_settings.images_dir)
    before = np.asarray(Image.open(image).convert("RGB"))
    after = np.asarray(store.open(out["image"]["id"]).convert("RGB"))
    blend = np.asarray(store.open(out["mask_id"]).convert("L")) > 0
    assert blend.any() and not blend.all()
    assert np.array_equal(before[~blend], after[~blend])
    assert not np.array_equal(before[blend], after[blend])  # the region was repainted remotely


async def test_a_job_handle_on_ray_can_be_waited_on_and_a_cancelled_job_stops_remotely(
    make_settings, ray_head
):
    settings = make_settings(runner="ray", ray_address=ray_head, max_wait_s=0.05)
    async with connect(settings) as client:
        long = structured(await client.call_tool("generate", {"prompt": "x", "steps": 60, "width": 128}))
        assert long["status"] == "running"
        job = long["job"]["job_id"]
        with anyio.fail_after(60):  # it really runs remotely: steps come back
            while (
                structured(await client.call_tool("jobs", {"action": "status", "job_id": job}))["jobs"][0][
                    "step"
                ]
                < 2
            ):
                await anyio.sleep(0.1)
        cancelled = structured(await client.call_tool("jobs", {"action": "cancel", "job_id": job}))["jobs"][0]
        short = structured(await client.call_tool("generate", {"prompt": "x", "steps": 2}))
        waited = structured(
            await client.call_tool(
                "jobs", {"action": "wait", "job_id": short["job"]["job_id"], "timeout_s": 60}
            )
        )
    assert cancelled["status"] == "cancelled" and cancelled["step"] < 60
    assert waited["jobs"][0]["status"] == "done" and len(waited["result"]["candidates"]) == 1


async def test_two_limner_servers_share_one_cluster(ray_settings):
    results: dict[str, dict] = {}

    async def call(name: str, client: Client, seed: int) -> None:
        results[name] = structured(
            await client.call_tool("generate", {"prompt": "a lamp", "seed": seed, "steps": 2})
        )

    async with (
        Client(build_server(ray_settings)) as first,
        Client(build_server(ray_settings)) as second,
        anyio.create_task_group() as tg,
    ):
        tg.start_soon(call, "first", first, 1)
        tg.start_soon(call, "second", second, 2)
    assert results["first"]["candidates"][0]["id"] != results["second"]["candidates"][0]["id"]


async def test_a_replica_killed_mid_job_fails_that_job_clearly_and_the_next_call_works(
    make_settings, ray_head
):
    settings = make_settings(runner="ray", ray_address=ray_head, max_wait_s=0.05)
    async with connect(settings) as client:
        long = structured(  # long enough (~30 s here) to be killed mid-way
            await client.call_tool("generate", {"prompt": "x", "steps": 150, "width": 256, "height": 256})
        )
        job = long["job"]["job_id"]
        with anyio.fail_after(60):
            while (
                structured(await client.call_tool("jobs", {"action": "status", "job_id": job}))["jobs"][0][
                    "step"
                ]
                < 2
            ):
                await anyio.sleep(0.1)
        killed = kill_replica("limner-generator")
        failed = structured(
            await client.call_tool("jobs", {"action": "wait", "job_id": job, "timeout_s": 60})
        )
        again = structured(await client.call_tool("generate", {"prompt": "x", "steps": 2}))
        if again["status"] == "running":
            again = structured(
                await client.call_tool(
                    "jobs", {"action": "wait", "job_id": again["job"]["job_id"], "timeout_s": 120}
                )
            )["result"]
    assert killed
    (state,) = failed["jobs"]
    assert state["status"] == "failed" and failed["result"] is None
    assert "the Ray worker for the generator role was lost mid-job" in state["error"]
    assert "Call again" in state["error"]
    assert again["status"] == "done"


def kill_replica(app: str) -> bool:
    """Kill the replica actor of `app` as a crash would (no graceful shutdown); Serve starts a new one."""
    for named in ray.util.list_named_actors(all_namespaces=True):
        if named["namespace"] == "serve" and named["name"].startswith(f"SERVE_REPLICA::{app}#"):
            ray.kill(ray.get_actor(named["name"], namespace="serve"), no_restart=False)
            return True
    return False


def test_an_unreachable_cluster_is_a_tool_error_naming_it_and_the_server_stays_up(tmp_path, models_path):
    """In its own process: a process holds one Ray driver, and this one is connected to the test cluster."""
    address = f"127.0.0.1:{free_port()}"
    script = (
        "import anyio\n"
        "from mcp import Client\n"
        "from server.app import build_server\n"
        "from server.settings import load_settings\n"
        "async def main():\n"
        f"    flags = {{'home': {str(tmp_path / 'home')!r}, 'profile': 'tiny', 'models_path': {str(models_path)!r},"
        f" 'runner': 'ray', 'ray_address': {address!r}}}\n"
        "    async with Client(build_server(load_settings(flags=flags, environ={}))) as client:\n"
        "        failed = await client.call_tool('generate', {'prompt': 'x', 'steps': 1})\n"
        "        kept = await client.call_tool('remember', {'text': 'still up', 'kind': 'fact'})\n"
        "        print(failed.is_error, failed.content[0].text)\n"
        "        print(kept.is_error, kept.structured_content['id'])\n"
        "anyio.run(main)\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    failed, kept = done.stdout.splitlines()[-2:]
    assert failed.startswith("True ") and f"cannot reach the Ray cluster at '{address}'" in failed
    assert "ray status" in failed and kept.startswith("False mem_")
    assert time.monotonic() - started < 60  # refused at once, not after ray.init's minutes of retries


async def test_a_role_asking_more_gpus_than_the_cluster_has_is_a_clear_error_at_its_first_call(
    make_settings, ray_head
):
    settings = make_settings(runner="ray", ray_address=ray_head, ray_num_gpus={"inpainter": 1})
    half = ModelSpec(
        name="tiny-clip-half",
        role="clip",
        source="tiny:clip",
        focus_size=32,
        dtype="float32",
        gpu_fraction=0.5,
    )
    fractional = make_settings(
        runner="ray", ray_address=ray_head, models={half.name: half}, roles={"clip": half.name}
    )
    async with connect(settings) as client:
        text = error_text(
            await client.call_tool(
                "refine_region", {"image": photo(settings.home), "prompt": "x", "bbox": [0, 0, 8, 8]}
            )
        )
    async with connect(fractional) as client:
        judged = error_text(
            await client.call_tool("judge", {"images": [photo(settings.home)], "prompt": "an astronaut"})
        )
    assert (
        "the inpainter deployment asks for 1 GPU(s) per replica (ray_num_gpus.inpainter) but the cluster"
        in text
    )
    assert "has 0 (the largest node 0)" in text and "lower ray_num_gpus.inpainter" in text
    assert (
        "the judge deployment asks for 0.5 GPU(s) per replica (gpu_fraction of model tiny-clip-half)"
        in judged
    )


def test_on_a_cluster_that_starts_nodes_on_demand_a_gpu_role_is_not_refused_and_gets_gpus_by_default(
    ray_head,
):
    """ray_autoscaler: no GPU node is up (the loopback cluster has none), yet the replica asks for its GPUs,
    since asking is what makes the autoscaler start one; without it the same request is refused."""
    from mcp.server.mcpserver.exceptions import ToolError

    from tools.models.ray_deploy import RayOptions, deployment_options

    if not ray.is_initialized():
        ray.init(address=ray_head, namespace="limner", log_to_driver=False)
    on_demand = RayOptions(address=ray_head, num_gpus={"inpainter": 1.0}, autoscaler=True)
    assert deployment_options("inpainter", on_demand, lambda role: None)["ray_actor_options"]["num_gpus"] == 1
    default = deployment_options("generator", on_demand, lambda role: None)["ray_actor_options"]
    assert default["num_gpus"] == 1.0  # the table's default, though no node has a GPU now
    up_now = RayOptions(address=ray_head, num_gpus={"inpainter": 1.0})
    assert deployment_options("generator", up_now, lambda role: None)["ray_actor_options"]["num_gpus"] == 0
    with pytest.raises(ToolError, match="set ray_autoscaler=true"):
        deployment_options("inpainter", up_now, lambda role: None)


async def test_a_limner_server_killed_outright_has_its_ray_job_stopped_once_its_lease_runs_out(
    make_settings, ray_head, tmp_path, models_path
):
    """`limner serve --http` runs a long generate on the cluster and is SIGKILLed (it cannot cancel anything);
    a call from another server that would queue behind that job on the one replica still finishes soon after
    the killed server's 2 s lease, so the replica stopped the orphaned job (it had minutes of steps left)."""
    env = server_env(
        tmp_path / "killed",
        models_path,
        LIMNER_RUNNER="ray",
        LIMNER_RAY_ADDRESS=ray_head,
        LIMNER_RAY_LEASE_S="2",
        LIMNER_MAX_WAIT_S="0.05",
        LIMNER_MAX_STEPS="1500",
    )
    port = free_port()
    killed = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--http", "--port", str(port)],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        with anyio.fail_after(60):
            while not port_open(port):
                assert killed.poll() is None, "limner serve exited at start"
                await anyio.sleep(0.2)
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            long = structured(  # ~1500 steps at 256 px: minutes of work on these cores
                await client.call_tool(
                    "generate", {"prompt": "x", "steps": 1500, "width": 256, "height": 256}
                )
            )
            job = long["job"]["job_id"]
            with anyio.fail_after(120):  # it runs remotely: steps come back
                while await job_step(client, job) < 2:
                    await anyio.sleep(0.2)
    finally:
        os.killpg(killed.pid, signal.SIGKILL)  # no shutdown: its lease is simply no longer renewed
        killed.wait(30)
    started = time.monotonic()
    async with connect(make_settings(runner="ray", ray_address=ray_head)) as client:
        with anyio.fail_after(90):
            behind = structured(await client.call_tool("generate", {"prompt": "y", "steps": 2}))
    waited = time.monotonic() - started
    assert behind["status"] == "done" and len(behind["candidates"]) == 1
    assert waited < 60, f"the orphaned job held the replica for {waited:.0f} s"


async def test_deployments_take_cpus_and_autoscaling_from_settings_and_the_models_tool_shows_and_frees_them(
    make_settings, ray_head
):
    settings = make_settings(
        runner="ray", ray_address=ray_head, ray_num_cpus=0.25, ray_min_replicas=0, ray_max_replicas=2
    )
    async with connect(settings) as client:
        before = structured(await client.call_tool("models", {}))["cluster"]
        if deployment(before, "detector")["status"] != "NOT_DEPLOYED":  # another test's options: start afresh
            serve.delete("limner-detector")
        located = structured(
            await client.call_tool(
                "locate", {"image": photo(settings.home), "objects": ["a helmet"], "masks": "box"}
            )
        )
        with anyio.fail_after(30):  # a replica reports what it holds every half second
            while not (
                replica := running_replica(listed := structured(await client.call_tool("models", {})))
            )["loaded"]:
                await anyio.sleep(0.2)
        freed = structured(
            await client.call_tool("models", {"action": "unload", "role_or_model": "detector"})
        )
        wrong = error_text(await client.call_tool("models", {"action": "unload", "role_or_model": "nope"}))
    assert located["tiny"] is True
    detector = deployment(listed["cluster"], "detector")
    assert detector["status"] == "HEALTHY" and detector["num_cpus"] == 0.25 and detector["num_gpus"] == 0
    assert detector["autoscaling"] == {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 1.0}
    assert "runs on the Ray cluster at" in listed["cluster"]["message"]
    assert [m["role"] for m in replica["loaded"]] == ["detector"]
    assert all(not r["loaded"] for r in listed["roles"])  # nothing is loaded in this process
    assert [(f["role"], f["replica"]) for f in freed["unloaded"]] == [("detector", replica["replica_id"])]
    assert "sent to the replicas of" in freed["message"] and "limner-detector" in freed["message"]
    assert running_replica(freed)["loaded"] == []  # as the replica answered the unload
    assert "no Ray deployment loads 'nope'" in wrong


def running_replica(models: dict) -> dict:
    (replica,) = [r for r in deployment(models["cluster"], "detector")["replicas"] if r["state"] == "RUNNING"]
    return replica


def test_autoscaling_settings_out_of_order_are_refused_naming_both(make_settings):
    with pytest.raises(SettingsError, match="ray_min_replicas 3 is above ray_max_replicas 2"):
        make_settings(runner="ray", ray_min_replicas=3, ray_max_replicas=2)


def deployment(cluster: dict, role: str) -> dict:
    (found,) = [d for d in cluster["deployments"] if d["role"] == role]
    return found


async def job_step(client: Client, job: str) -> int:
    return structured(await client.call_tool("jobs", {"action": "status", "job_id": job}))["jobs"][0]["step"]


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0

"""Benchmark for the Ray runner against the local one (tiny model, 64 px, 4 steps). One JSON line per figure.

    .venv/bin/python bench/bench_runner.py [--runs 15]      # needs the extra: pip install "limner[ray]"

(a) per-call overhead of runner = "ray" over runner = "local": generate's wall time through the in-process MCP
    client, paired call by call, minus each call's own denoise timing (target <= 25 ms p50 on 2 cores);
(b) two limner servers calling at once against one cluster, with the generator deployment at 1 replica and
    at 2: calls per second and their ratio (on 2 CPU cores the replicas share the cores: the figure shows the
    plumbing, not a GPU cluster's scaling).

A Ray head is started on loopback for the run (`ray start --head`, 2 CPUs) and stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# before Ray is imported: no call may start a local cluster after the driver shut down (Ray's auto-init writes
# a token to ~/.ray/auth_token that turns token auth on for later heads), and no token auth on loopback
os.environ.setdefault("RAY_ENABLE_AUTO_CONNECT", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from server.app import build_server  # noqa: E402
from server.settings import load_settings  # noqa: E402

ARGS = {"prompt": "a red bicycle", "width": 64, "height": 64, "steps": 4}


def emit(name: str, value: float, unit: str, target: str | None = None, **extra: Any) -> None:
    print(
        json.dumps({"name": name, "value": round(value, 3), "unit": unit, "target": target, **extra}),
        flush=True,
    )


def start_head() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ray_cli = Path(sys.executable).with_name("ray")
    head = subprocess.Popen(
        [
            str(ray_cli), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}",
            "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", f"--temp-dir=/tmp/ray-bench-{os.getpid()}",
            "--disable-usage-stats",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    address = f"127.0.0.1:{port}"
    for _ in range(60):
        if (
            subprocess.run([str(ray_cli), "status", f"--address={address}"], capture_output=True).returncode
            == 0
        ):
            return head, address
        time.sleep(1)
    raise SystemExit("the Ray head did not start in 60 s")


def stop_head(head: subprocess.Popen) -> None:
    os.killpg(head.pid, signal.SIGTERM)
    head.wait(30)
    subprocess.run([str(Path(sys.executable).with_name("ray")), "stop", "--force"], capture_output=True)


async def overhead(local: Any, remote: Any, runs: int) -> None:
    async def one(client: Client, seed: int) -> float:
        started = time.perf_counter()
        result = await client.call_tool("generate", {**ARGS, "seed": seed})
        wall = (time.perf_counter() - started) * 1000
        assert not result.is_error and result.structured_content is not None, result.content
        return wall - result.structured_content["timings"]["denoise"] * 1000

    async with Client(build_server(local)) as here, Client(build_server(remote)) as there:
        await one(here, 0)  # load (and deploy) first
        await one(there, 0)
        pairs = [(await one(here, i), await one(there, i)) for i in range(1, runs + 1)]
    extra = [there_ms - here_ms for here_ms, there_ms in pairs]
    emit(
        "ray_runner_overhead_over_local_p50",
        statistics.median(extra),
        "ms",
        "<= 25",
        local_non_denoise_p50_ms=round(statistics.median(p[0] for p in pairs), 2),
        ray_non_denoise_p50_ms=round(statistics.median(p[1] for p in pairs), 2),
        runs=runs,
    )


async def throughput(settings: Any, calls: int) -> float:
    async with Client(build_server(settings)) as first, Client(build_server(settings)) as second:

        async def burst(count: int) -> float:
            started = time.perf_counter()
            async with anyio.create_task_group() as tg:
                for i in range(count):
                    tg.start_soon((first if i % 2 else second).call_tool, "generate", {**ARGS, "seed": i})
            return time.perf_counter() - started

        await burst(4 * settings.ray_replicas)  # every replica loads its model before the clock starts
        return calls / await burst(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    head, address = start_head()
    try:
        home = Path(tempfile.mkdtemp(prefix="limner-bench-runner-"))
        base = {"home": home, "profile": "tiny", "max_wait_s": 600}
        local = load_settings(flags=base, environ={})
        remote = load_settings(flags={**base, "runner": "ray", "ray_address": address}, environ={})
        anyio.run(overhead, local, remote, args.runs)
        from ray import serve

        rates = {}
        for replicas in (1, 2):
            serve.delete("limner-generator")  # redeployed at the next call with this many replicas
            settings = load_settings(
                flags={**base, "runner": "ray", "ray_address": address, "ray_replicas": replicas}, environ={}
            )
            rates[replicas] = anyio.run(throughput, settings, 2 * args.runs)
            emit(f"ray_two_servers_calls_per_s_{replicas}_replica", rates[replicas], "calls/s")
        emit("ray_two_replicas_over_one", rates[2] / rates[1], "x", cores=os.cpu_count())
    finally:
        stop_head(head)


if __name__ == "__main__":
    main()

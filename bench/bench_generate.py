"""Benchmark for generate over stdio on the tiny model (128 px, 4 steps). One JSON line per figure.

    .venv/bin/python bench/bench_generate.py [--runs 15]

(a) server overhead per image: stdio `generate` wall time minus the same pipeline call made directly
    (target <= 15 ms p50), paired call by call and under the server's OMP_WAIT_POLICY=PASSIVE; also
    wall minus the server's own denoise timing;
(b) n=4 in one call against 4 calls of n=1 (ratio);
(c) first call (load) against warm calls;
(d) tools/list round trip over stdio (target <= 5 ms p50) through three clients: the TypeScript SDK's Client,
    which Claude Desktop and Claude Code are built on (needs node; `npm install --prefix bench/ts` once, else
    that figure is skipped with a note); the Python SDK's Client; and a minimal host (one line out, one line
    back, json.loads), which shows the server's and the pipe's share.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from mcp import Client, StdioServerParameters

# the direct calls run under the same OpenMP policy as the server (limner's main() sets it), or (a) would
# measure the policy instead of the server
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
REPO = Path(__file__).resolve().parent.parent
ARGS = {"prompt": "a red bicycle leaning on a wall", "width": 128, "height": 128, "steps": 4, "seed": 1}


def emit(name: str, value: float, unit: str, target: str | None = None, **extra) -> None:
    print(
        json.dumps({"name": name, "value": round(value, 3), "unit": unit, "target": target, **extra}),
        flush=True,
    )


def p50(values: list[float]) -> float:
    return statistics.median(values)


def direct_pipeline(models_path: Path):
    """The same pipeline call generate makes, without the server: loaded once; each call returns its ms."""
    import torch

    from tools.models.cache import ModelCache
    from tools.models.specs import PRESETS

    cache = ModelCache(PRESETS, {}, "tiny", models_path)
    pipe = cache.get("generator").model

    def call() -> float:
        gens = [torch.Generator().manual_seed(ARGS["seed"])]
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(
                prompt=ARGS["prompt"],
                num_images_per_prompt=1,
                width=ARGS["width"],
                height=ARGS["height"],
                num_inference_steps=ARGS["steps"],
                guidance_scale=0.0,
                generator=gens,
                callback_on_step_end=lambda p, s, t, kw: kw,
            )
        return (time.perf_counter() - started) * 1000

    call()  # the first call warms caches
    return call


def raw_round_trips(env: dict[str, str], rounds: int = 300) -> None:
    """tools/list and the trivial call from a minimal host: a line out, a line back, json.loads; interleaved."""
    from mcp.types import LATEST_PROTOCOL_VERSION

    server = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        cwd=str(REPO),
    )
    meta = {
        "io.modelcontextprotocol/protocolVersion": LATEST_PROTOCOL_VERSION,
        "io.modelcontextprotocol/clientInfo": {"name": "bench", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    ids = iter(range(1, 10**9))

    def ask(method: str, params: dict) -> float:
        started = time.perf_counter()
        request = {"jsonrpc": "2.0", "id": next(ids), "method": method, "params": {**params, "_meta": meta}}
        server.stdin.write(json.dumps(request).encode() + b"\n")
        server.stdin.flush()
        answer = json.loads(server.stdout.readline())
        elapsed = (time.perf_counter() - started) * 1000
        assert answer.get("id") == request["id"] and "result" in answer, answer
        return elapsed

    try:
        lists, trivial = [], []
        for i in range(rounds + 20):
            listed = ask("tools/list", {})
            called = ask("tools/call", {"name": "jobs", "arguments": {"action": "list"}})
            if i >= 20:
                lists.append(listed)
                trivial.append(called)
    finally:
        server.stdin.close()
        server.wait(timeout=30)
    note = "a minimal host (line out, line back, json.loads): the server's and the pipe's share"
    emit("tools_list_raw_stdio_p50", p50(lists), "ms", None, note=note)
    emit("trivial_call_raw_stdio_p50", p50(trivial), "ms", None, note=note)


def ts_round_trips(env: dict[str, str]) -> None:
    """(d) through the TypeScript SDK's Client (bench/ts/tools_list.mjs), when node and the SDK are there."""
    script = REPO / "bench" / "ts" / "tools_list.mjs"
    node = shutil.which("node")
    if (
        node is None
        or not (REPO / "bench" / "ts" / "node_modules" / "@modelcontextprotocol" / "sdk").is_dir()
    ):
        why = "node is not on PATH" if node is None else "run `npm install --prefix bench/ts` first"
        print(json.dumps({"name": "tools_list_ts_stdio_p50", "skipped": why}), flush=True)
        return
    done = subprocess.run(
        [node, str(script), sys.executable, str(REPO)], env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"bench/ts/tools_list.mjs failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    print(done.stdout, end="", flush=True)


async def main(runs: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home, models_path = Path(tmp) / "home", Path(tmp) / "models"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LIMNER_")}
        env.update(LIMNER_HOME=str(home), LIMNER_PROFILE="tiny", LIMNER_MODELS_PATH=str(models_path))
        raw_round_trips(env)
        ts_round_trips(env)
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "server.cli", "serve"], env=env, cwd=str(REPO)
        )
        async with Client(params) as client:
            # (d) tools/list round trip, interleaved with the floor (a round trip that carries almost nothing)
            # so that both see the same spells of a noisy machine
            for _ in range(20):
                await client.list_tools(cache_mode="bypass")
                await client.call_tool("jobs", {"action": "list"})
            lists, trivial = [], []
            for _ in range(300):
                started = time.perf_counter()
                await client.list_tools(cache_mode="bypass")  # over the wire: the client's cache is bypassed
                lists.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                await client.call_tool("jobs", {"action": "list"})
                trivial.append((time.perf_counter() - started) * 1000)
            emit("tools_list_stdio_p50", p50(lists), "ms", "<= 5")
            emit("trivial_call_stdio_p50", p50(trivial), "ms", None)
            cached = []  # what a client that honours the server's cache hint pays
            for _ in range(100):
                started = time.perf_counter()
                await client.list_tools()
                cached.append((time.perf_counter() - started) * 1000)
            emit("tools_list_cached_p50", p50(cached), "ms", None, note="client reuses the listing (ttlMs)")
            listing = (await client.list_tools()).model_dump_json(by_alias=True, exclude_none=True)
            emit("tools_list_bytes", len(listing), "bytes", None)

            # (c) first call (imports, tiny build, load) against warm calls
            started = time.perf_counter()
            await client.call_tool("generate", ARGS)
            first = (time.perf_counter() - started) * 1000
            # (a) each server call is followed by the same pipeline call made directly in this process
            # (the server is idle meanwhile), so both see the same spell of a shared machine
            direct_call = direct_pipeline(models_path)
            walls, denoise, direct = [], [], []
            for _ in range(runs):
                started = time.perf_counter()
                result = await client.call_tool("generate", ARGS)
                walls.append((time.perf_counter() - started) * 1000)
                denoise.append(result.structured_content["timings"]["denoise"] * 1000)
                direct.append(direct_call())
            emit(
                "generate_first_call",
                first,
                "ms",
                note="includes torch/diffusers import, tiny build and load",
            )
            emit("generate_warm_call_p50", p50(walls), "ms")

            # (b) batching: alternate the two, 5 times each, so a noisy spell on a shared machine hits both
            batched, single = [], []
            for _ in range(5):
                started = time.perf_counter()
                await client.call_tool("generate", {**ARGS, "n": 4})
                batched.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                for i in range(4):
                    await client.call_tool("generate", {**ARGS, "seed": 100 + i})
                single.append((time.perf_counter() - started) * 1000)
            emit("n4_one_call_p50", p50(batched), "ms")
            emit("n1_four_calls_p50", p50(single), "ms")
            ratios = [b / s for b, s in zip(batched, single, strict=True)]
            emit("n4_batched_over_four_single_ratio_p50", p50(ratios), "ratio", "< 1 is a win")

        emit("direct_pipeline_p50", p50(direct), "ms")
        overheads = [w - d for w, d in zip(walls, direct, strict=True)]
        emit("server_overhead_per_image_p50", p50(overheads), "ms", "<= 15", note="paired with direct calls")
        emit(
            "server_overhead_vs_own_denoise_p50",
            p50([w - d for w, d in zip(walls, denoise, strict=True)]),
            "ms",
            "<= 15",
            note="wall minus the denoise time the server measured for the same call",
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    anyio.run(main, parser.parse_args().runs)

"""Benchmark for `limner eval`: the orchestration overhead per prompt beyond model time, on a tiny run.

Run: .venv/bin/python bench/bench_eval.py [--limit 6] [--n 4] [--rounds 3]. Prints one JSON line per figure.
n and rounds default to `limner eval`'s own defaults: the tiny run is the command as a user runs it.

A tiny run (every policy, GenEval prompts, the tiny twins) is timed twice in one process: the first run loads
the models and builds any twin not built yet; the second, timed one starts a fresh in-process server, whose
model loads (as the tools report them) count with model time here. "Stage seconds" are what the tools report
in `timings` (model work, loading, and the tools' own pixel work: decoding inputs, metrics, storing PNGs);
waiting in the queue is not one. The figures:
- eval_overhead_share_per_prompt: over the (prompt, policy) pairs, (their wall time - their stage seconds) /
  their wall time: the MCP round trips (the client's check of each result against the tool's output schema
  included), the server's work outside its timed stages (argument checks, thread hand-offs, the session log)
  and the evaluation's code per pair (the JSONL line with fsync, the kept image). Target: < 5 %.
- eval_start_s, eval_report_s, eval_client_compile_s: the one-offs per run (the server built and connected;
  the summary and report written; the MCP client compiling each tool's output schema into a validator, the
  first time it checks that tool's result on a connection: 15-35 ms a tool), apart from the per-prompt
  figure.
- eval_overhead_share: the whole run's (wall - stage seconds) / wall, the one-offs included.
- eval_mcp_and_server_share, eval_own_share: the per-prompt overhead split: inside tool calls (as the client
  times them) and outside them (the evaluation's code), as shares of the pairs' wall time.
- eval_overhead_per_pair_s: the per-prompt overhead in seconds per pair.
- eval_gc_pause_ms, eval_gc_pause_max_ms: the garbage collector's pauses during the timed run (every
  thread stops for them): their sum and the longest (tools/models/weights.py `settle`).
- eval_client_check_share: the part of it the MCP client spends checking each structured result against the
  tool's output schema (the SDK's jsonschema validation; timed by wrapping it, nothing else changes), the
  compiles apart.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluation.run import EvalOptions, evaluate  # noqa: E402
from server.settings import load_settings  # noqa: E402


def emit(name: str, value: float, unit: str, target: str | None = None) -> None:
    line = {"name": name, "value": round(value, 4), "unit": unit}
    if target:
        line["target"] = target
    print(json.dumps(line), flush=True)


def time_client_checks() -> tuple[list[float], list[float]]:
    """Wrap the SDK client's output-schema check to time it: the seconds of each check (its compile
    included) go to the first list, those of each compile (a tool's first check on a connection) to the
    second. The compile is a private method of the SDK's; without it, compiles count as checks."""
    from mcp.client.session import ClientSession

    spent: list[float] = []
    compiled: list[float] = []
    check = ClientSession.validate_tool_result
    compile_ = getattr(ClientSession, "_output_schema_validator", None)

    async def timed(self: ClientSession, name: str, result: Any) -> None:
        started = time.perf_counter()
        try:
            await check(self, name, result)
        finally:
            spent.append(time.perf_counter() - started)

    def timed_compile(self: ClientSession, name: str, schema: dict[str, Any]) -> Any:
        fresh = name not in getattr(self, "_tool_output_validators", {})
        started = time.perf_counter()
        try:
            return compile_(self, name, schema)  # pyright: ignore[reportOptionalCall]
        finally:
            if fresh:
                compiled.append(time.perf_counter() - started)

    ClientSession.validate_tool_result = timed  # pyright: ignore[reportAttributeAccessIssue]
    if compile_ is not None:
        ClientSession._output_schema_validator = timed_compile  # pyright: ignore[reportAttributeAccessIssue]
    return spent, compiled


def time_gc_pauses() -> list[float]:
    """The seconds of each garbage collection from now on."""
    pauses: list[float] = []
    began = [0.0]

    def timed(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            began[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - began[0])

    gc.callbacks.append(timed)
    return pauses


async def main(limit: int, n: int, rounds: int, models: Path | None) -> None:
    checks, compiles = time_client_checks()
    pauses = time_gc_pauses()
    with tempfile.TemporaryDirectory() as tmp:
        flags = {"home": Path(tmp) / "home", "profile": "tiny", "max_wait_s": 3600}
        if models is not None:
            flags["models_path"] = models
        settings = load_settings(flags=flags, environ={})
        warm = EvalOptions(suite="geneval", out=Path(tmp) / "warm", limit=1, n=n, rounds=rounds)
        await evaluate(warm, settings)  # builds the twins once; loads and first calls
        options = EvalOptions(suite="geneval", out=Path(tmp) / "run", limit=limit, n=n, rounds=rounds)
        checks.clear()
        compiles.clear()
        pauses.clear()
        started = time.perf_counter()
        outcome = await evaluate(options, settings)
        wall = time.perf_counter() - started
    records = outcome.records
    pairs = len(records)
    stage = sum(r["model_s"] + r["load_s"] for r in records)
    tools = sum(r["tool_wall_s"] for r in records)  # the tool calls as the client times them
    compile_s = sum(compiles)  # a one-off per tool and connection, inside the first pair that calls the tool
    paired = outcome.seconds["pairs"] - compile_s  # the pairs' wall time: after the start, before the report
    tools -= compile_s
    emit("eval_pairs", pairs, "(prompt, policy) pairs")
    emit("eval_wall_s", wall, "s")
    emit("eval_stage_s", stage, "s")
    emit(
        "eval_overhead_share_per_prompt", 100 * (paired - stage) / paired, "% of the pairs' wall time", "< 5"
    )
    emit("eval_overhead_per_pair_s", (paired - stage) / pairs, "s")
    emit("eval_mcp_and_server_share", 100 * (tools - stage) / paired, "% of the pairs' wall time")
    emit("eval_own_share", 100 * (paired - tools) / paired, "% of the pairs' wall time")
    emit("eval_client_check_share", 100 * (sum(checks) - compile_s) / paired, "% of the pairs' wall time")
    emit("eval_start_s", outcome.seconds["start"], "s (once per run)")
    emit("eval_report_s", outcome.seconds["report"], "s (once per run)")
    emit("eval_client_compile_s", compile_s, "s (once per tool and connection)")
    emit("eval_gc_pause_ms", 1000 * sum(pauses), "ms (all collections)")
    emit("eval_gc_pause_max_ms", 1000 * max(pauses, default=0.0), "ms (the longest)")
    emit("eval_overhead_share", 100 * (wall - stage) / wall, "% of wall time, the one-offs included")
    emit("eval_prompts_per_minute", 60 * pairs / len(options.policies) / wall, "prompts/min (every policy)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--limit", type=int, default=6, help="prompts (taken from the tags in turn)")
    parser.add_argument("--n", type=int, default=EvalOptions.n, help="candidates per generate (4)")
    parser.add_argument("--rounds", type=int, default=EvalOptions.rounds, help="the loop's rounds (3)")
    parser.add_argument(
        "--models", type=Path, help="a folder of tiny twins built before (default: built here)"
    )
    args = parser.parse_args()
    anyio.run(main, args.limit, args.n, args.rounds, args.models)

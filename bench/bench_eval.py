"""Benchmark for `limner eval`: the orchestration overhead per prompt beyond model time, on a tiny run.

Run: .venv/bin/python bench/bench_eval.py [--limit 6] [--n 2] [--rounds 1]. Prints one JSON line per figure.

A tiny run (every policy, GenEval prompts, the tiny twins) is timed twice in one process: the first run loads
the models and builds any twin not built yet; the second, timed one starts a fresh in-process server, whose
model loads (as the tools report them) count with model time here. The figures:
- eval_overhead_share: (the run's wall time - the model and loading seconds the tools report) / wall time.
  What is left: the MCP round trips, the server's work outside its timed stages (previews, the session log
  and its gallery) and the evaluation's code (JSONL with fsync, image copies, the report). Target: < 5 %.
- eval_overhead_share_warm: the same over the pairs after the first (models loaded, no server start).
- eval_own_share: the evaluation's own part: time outside tool calls / wall time.
- eval_overhead_per_pair_s: the overhead in seconds per (prompt, policy) pair.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

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


async def main(limit: int, n: int, rounds: int, models: Path | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        flags = {"home": Path(tmp) / "home", "profile": "tiny", "max_wait_s": 3600}
        if models is not None:
            flags["models_path"] = models
        settings = load_settings(flags=flags, environ={})
        warm = EvalOptions(suite="geneval", out=Path(tmp) / "warm", limit=1, n=n, rounds=rounds)
        await evaluate(warm, settings)  # builds the twins once; loads and first calls
        options = EvalOptions(suite="geneval", out=Path(tmp) / "run", limit=limit, n=n, rounds=rounds)
        started = time.perf_counter()
        outcome = await evaluate(options, settings)
        wall = time.perf_counter() - started
    pairs = len(outcome.records)
    model = sum(r["model_s"] + r["load_s"] for r in outcome.records)
    tools = sum(r["tool_wall_s"] for r in outcome.records)
    warm = sum(r["wall_s"] for r in outcome.records[1:])  # from the second pair on: models loaded
    warm_model = sum(r["model_s"] + r["load_s"] for r in outcome.records[1:])
    emit("eval_pairs", pairs, "(prompt, policy) pairs")
    emit("eval_wall_s", wall, "s")
    emit("eval_model_s", model, "s")
    emit("eval_overhead_share", 100 * (wall - model) / wall, "% of wall time", "< 5")
    emit("eval_overhead_per_pair_s", (wall - model) / pairs, "s")
    emit(
        "eval_overhead_share_warm",
        100 * (warm - warm_model) / warm,
        "% of the pairs' wall time after the first",
    )
    emit("eval_mcp_and_server_share", 100 * (tools - model) / wall, "% of wall time")
    emit("eval_own_share", 100 * (wall - tools) / wall, "% of wall time")
    emit("eval_prompts_per_minute", 60 * pairs / len(options.policies) / wall, "prompts/min (every policy)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--limit", type=int, default=6, help="prompts (taken from the tags in turn)")
    parser.add_argument("--n", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--models", type=Path, help="a folder of tiny twins built before (default: built here)"
    )
    args = parser.parse_args()
    anyio.run(main, args.limit, args.n, args.rounds, args.models)

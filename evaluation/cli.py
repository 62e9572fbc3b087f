"""`limner eval`: run a benchmark suite through the policies and write the results, summary and report.

server/cli.py hands every `limner eval ...` command line here (the one import of evaluation from below it):
the evaluation is an MCP client of the server, so it sits above server/ and only this entry point is
reached from there.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from evaluation.policies import POLICIES
from evaluation.report import table
from evaluation.run import EvalError, EvalOptions, run_eval
from server.settings import SettingsError, load_settings

ROLE_FLAGS = ("generator", "inpainter", "detector", "segmenter", "clip", "vlm")
DIRECT_WAIT_S = 3600.0  # results come back directly, not as job handles, unless --max-wait-s says otherwise


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="limner eval",
        description="Measure what the generate-judge-refine loop adds, on GenEval or GenEval++ prompts: each "
        "policy drives an in-process limner server through the MCP client.",
    )
    p.add_argument("--suite", required=True, help="geneval, geneval++ or a JSONL file in GenEval's format")
    p.add_argument(
        "--policy",
        default=",".join(POLICIES),
        help=f"comma-separated policies, run on the same prompts and seeds (default: {','.join(POLICIES)})",
    )
    p.add_argument("--n", type=int, default=4, help="candidates per generate call for best_of_n and loop (4)")
    p.add_argument("--rounds", type=int, default=3, help="most rounds the loop adds after best_of_n (3)")
    p.add_argument("--limit", type=int, help="at most this many prompts, taken from the tags in turn")
    p.add_argument("--tags", help="comma-separated tags to run (default: all)")
    p.add_argument(
        "--seed", type=int, default=0, help="base seed; prompt on line L starts at seed + 100*(L-1)"
    )
    p.add_argument(
        "--out", type=Path, required=True, help="folder for results; an earlier run's to resume it"
    )
    p.add_argument("--force", action="store_true", help="discard a run with other settings in --out")
    # the server's settings, as `limner serve` takes them
    p.add_argument("--config", type=Path, help="limner.toml to read (default: $LIMNER_HOME/limner.toml)")
    p.add_argument("--home", type=Path, help="LIMNER_HOME: where images, memory and tiny models live")
    p.add_argument("--profile", choices=["auto", "tiny", "real"], help="model profile")
    p.add_argument("--max-wait-s", dest="max_wait_s", type=float, help="answer with a job handle after this")
    p.add_argument("--log-level", dest="log_level", help="DEBUG, INFO, WARNING (default here), ERROR")
    p.add_argument("--model-memory-gb", dest="model_memory_gb", help="GB all loaded models may take (or off)")
    p.add_argument("--runner", choices=["local", "ray"], help="where model work runs")
    p.add_argument("--ray-address", dest="ray_address", help="the Ray cluster for --runner ray")
    for role in ROLE_FLAGS:
        p.add_argument(f"--{role}", metavar="MODEL", help=f"the named model for the {role} role")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    flags = {
        k: getattr(args, k)
        for k in ("home", "profile", "max_wait_s", "log_level", "model_memory_gb", "runner", "ray_address")
    }
    roles = {role: getattr(args, role) for role in ROLE_FLAGS if getattr(args, role)}
    if roles:
        flags["roles"] = roles
    if args.max_wait_s is None:
        flags["max_wait_s"] = DIRECT_WAIT_S
    try:
        settings = load_settings(flags=flags, config=args.config)
    except SettingsError as exc:
        print(f"limner eval: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        stream=sys.stderr,
        level=(args.log_level or "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options = EvalOptions(
        suite=args.suite,
        out=args.out,
        policies=tuple(p.strip() for p in args.policy.split(",") if p.strip()),
        n=args.n,
        rounds=args.rounds,
        limit=args.limit,
        tags=tuple(t.strip() for t in (args.tags or "").split(",") if t.strip()),
        seed=args.seed,
        force=args.force,
    )
    try:
        outcome = run_eval(options, settings)
    except EvalError as exc:
        print(f"limner eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # what finished is on disk; the same command resumes
        print(f"limner eval: stopped; run the same command to resume from {args.out}", file=sys.stderr)
        return 130
    print(table(outcome.rows))
    print(f"\nresults: {outcome.out / 'results.jsonl'}\nreport:  {outcome.out / 'report.html'}")
    return 0

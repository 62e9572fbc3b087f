"""The runner: every selected prompt of a suite through every policy, on an in-process limner server driven
through the MCP client, one JSONL line per (prompt, policy) written as each finishes.

OUT/ holds run.json (the settings the results were made with), results.jsonl, images/ (each kept image),
summary.json and report.html. Run again with the same OUT and settings and the finished (prompt, policy)
pairs are read back, not redone; OUT holding a run made with other settings is refused unless `force`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from evaluation import policies, report, scoring
from evaluation.suites import Prompt, Suite, SuiteError, load_suite
from server.settings import Settings

MAX_ROUNDS = 10
SEED_STRIDE = 100  # prompt k's seeds start at seed + 100 * (line - 1): room for n * (rounds + 1) <= 88 seeds
ROLES = ("generator", "inpainter", "clip", "vlm", "detector", "segmenter")  # the roles a policy calls


class EvalError(ValueError):
    """A run that cannot start: the message names the option, the value, what is allowed and what to do."""


@dataclass(frozen=True)
class EvalOptions:
    suite: str
    out: Path
    policies: tuple[str, ...] = policies.POLICIES
    n: int = 4
    rounds: int = 3
    limit: int | None = None
    tags: tuple[str, ...] = ()
    seed: int = 0
    force: bool = False


@dataclass
class Outcome:
    out: Path
    records: list[dict[str, Any]]  # every finished line of results.jsonl, this run's and earlier ones
    ran: int  # pairs run now
    skipped: int  # pairs finished by an earlier run
    problems: list[str] = field(default_factory=list)  # suite lines left out, by line number
    rows: list[dict[str, Any]] = field(default_factory=list)  # the summary table
    seconds: dict[str, float] = field(
        default_factory=dict
    )  # start (server up), pairs, report: where time went


# -- 1. the options, checked before anything runs ---------------------------------------------------------
def check(options: EvalOptions, settings: Settings) -> tuple[Suite, list[Prompt], dict[str, Any]]:
    unknown = [p for p in options.policies if p not in policies.POLICIES]
    if unknown or not options.policies:
        raise EvalError(
            f"--policy: {','.join(unknown) or '(none)'} is not a policy; choose one or more of "
            f"{','.join(policies.POLICIES)}, comma-separated."
        )
    if len(set(options.policies)) != len(options.policies):
        raise EvalError(f"--policy: {','.join(options.policies)} names a policy twice; name each once.")
    if not 1 <= options.n <= settings.max_batch:
        raise EvalError(
            f"--n: {options.n} is out of range 1..{settings.max_batch} (candidates per generate call, capped "
            "by the server's max_batch); pass a number in that range."
        )
    if not 0 <= options.rounds <= MAX_ROUNDS:
        raise EvalError(
            f"--rounds: {options.rounds} is out of range 0..{MAX_ROUNDS}; pass a number in that range."
        )
    if options.limit is not None and options.limit < 1:
        raise EvalError(
            f"--limit: {options.limit} must be at least 1 (prompts in all, taken from the tags in turn); leave it out for all."
        )
    if options.seed < 0 or options.seed > 2**31:
        raise EvalError(f"--seed: {options.seed} is out of range 0..{2**31}.")
    try:
        suite = load_suite(options.suite)
    except SuiteError as exc:
        raise EvalError(str(exc)) from None
    missing = [t for t in options.tags if t not in suite.tags]
    if missing:
        raise EvalError(
            f"--tags: {','.join(missing)} not in suite {suite.name}; its tags: {','.join(suite.tags)}."
        )
    chosen = [p for p in suite.prompts if not options.tags or p.tag in options.tags]
    if (
        options.limit is not None and chosen
    ):  # taken from the tags in turn, so a few prompts still cover every tag
        by_tag: dict[str, list[Prompt]] = {}
        for p in chosen:
            by_tag.setdefault(p.tag, []).append(p)
        deepest = max(len(v) for v in by_tag.values())
        turns = [v[k] for k in range(deepest) for v in by_tag.values() if k < len(v)]
        chosen = sorted(turns[: options.limit], key=lambda p: p.line)
    made_with = {
        "suite": suite.name,
        "suite_sha256": suite.sha256,
        "n": options.n,
        "rounds": options.rounds,
        "seed": options.seed,
        "profile": settings.profile,
        "models": {role: settings.roles[role] for role in ROLES if role in settings.roles},
    }
    return suite, chosen, made_with


def prepare_out(out: Path, made_with: dict[str, Any], force: bool) -> dict[tuple[int, str], dict[str, Any]]:
    """OUT ready for this run; the records an earlier run with the same settings finished, by (line, policy)."""
    run_file, results = out / "run.json", out / "results.jsonl"
    if run_file.is_file():
        try:
            earlier = json.loads(run_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            earlier = {"unreadable": str(exc)}
        if earlier != made_with:
            if not force:
                differ = sorted(k for k in {*earlier, *made_with} if earlier.get(k) != made_with.get(k))
                raise EvalError(
                    f"--out: {out} holds a run made with other settings ({', '.join(differ)} differ: "
                    f"{ {k: earlier.get(k) for k in differ} } there, { {k: made_with.get(k) for k in differ} } "
                    "now); pass another --out, the same settings to resume, or --force to discard it and start over."
                )
            for name in ("results.jsonl", "summary.json", "report.html"):
                (out / name).unlink(missing_ok=True)
            shutil.rmtree(out / "images", ignore_errors=True)
    elif out.exists() and any(out.iterdir()) and not force:
        raise EvalError(
            f"--out: {out} is a folder with other files and no run.json; pass an empty or new folder, or --force."
        )
    (out / "images").mkdir(parents=True, exist_ok=True)
    _write_atomic(run_file, json.dumps(made_with, indent=2))
    return read_results(results)


def read_results(path: Path) -> dict[tuple[int, str], dict[str, Any]]:
    """The finished records; a last line cut off by a kill is dropped from the file (it is redone)."""
    if not path.is_file():
        return {}
    data = path.read_bytes()
    whole = data[: data.rfind(b"\n") + 1]
    if len(whole) != len(data):
        with path.open("r+b") as f:
            f.truncate(len(whole))
    done = {}
    for line in whole.decode("utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            done[(record["line"], record["policy"])] = record
    return done


def _write_atomic(path: Path, text: str) -> None:
    part = path.with_suffix(path.suffix + ".part")
    part.write_text(text)
    os.replace(part, path)


# -- 2. one (prompt, policy) pair -------------------------------------------------------------------------
async def run_pair(
    client: Any, prompt: Prompt, policy: str, options: EvalOptions, out: Path
) -> dict[str, Any]:
    plan = scoring.plan(prompt)
    seed = options.seed + SEED_STRIDE * (prompt.line - 1)
    started = time.perf_counter()
    record: dict[str, Any] = {
        "line": prompt.line,
        "tag": prompt.tag,
        "prompt": prompt.prompt,
        "policy": policy,
        "seed": seed,
        "expect": plan.expect,
        "not_scored": plan.not_scored,
    }
    trace = policies.Trace()
    try:
        if policy == "single":
            best, trace = await policies.single(client, prompt.prompt, plan.expect, seed)
        elif policy == "best_of_n":
            best, trace = await policies.best_of_n(client, prompt.prompt, plan.expect, seed, options.n)
        else:
            best, trace = await policies.loop(
                client, prompt.prompt, plan.expect, seed, options.n, options.rounds
            )
    except policies.PolicyError as exc:
        record.update(passed=False, error=str(exc), image=None, expectations=[], checklist=None)
    else:
        kept = out / "images" / f"{prompt.line:04d}-{policy}.png"
        keep(Path(best.path), kept)
        record.update(
            passed=scoring.passed(best.judgement.get("expectations")),
            error=None,
            image={"id": best.id, "store_path": best.path, "file": str(kept.relative_to(out))},
            expectations=best.judgement.get("expectations") or [],
            checklist=scoring.checklist(best.judgement),
        )
    record.update(
        images_generated=trace.images_generated,
        rounds_used=trace.rounds_used,
        actions=trace.actions,
        model_s=trace.model_s,
        load_s=trace.load_s,
        tool_wall_s=trace.tool_wall_s,
        wall_s=round(time.perf_counter() - started, 4),
        tiny=any(c["result"].get("tiny") for c in trace.calls),
        calls=trace.calls,
    )
    return record


def keep(stored: Path, kept: Path) -> None:
    """The best image in OUT: a hard link to the store's file where both are on one file system (stored
    images are never rewritten, and the link outlives the store's name: a full GenEval run at 1024 px keeps
    ~2.5 GB it would otherwise copy), else a copy. A file left by a pair that was stopped is replaced."""
    kept.unlink(missing_ok=True)
    try:
        os.link(stored, kept)
    except OSError:  # another file system, or one without hard links
        shutil.copyfile(stored, kept)


def append(results: TextIO, record: dict[str, Any]) -> None:
    """One line, handed to the OS before the next pair starts: a killed run loses at most the pair running.
    Not fsynced per line (a millisecond a pair): the file is synced when the run ends or stops, and lines a
    power cut takes are redone on resume like the pair running."""
    results.write(json.dumps(record, ensure_ascii=False) + "\n")
    results.flush()


# -- 3. the run --------------------------------------------------------------------------------------------
class Bar:
    """A progress bar on stderr: redrawn in place on a terminal, one line per pair elsewhere (logs, CI)."""

    def __init__(self, total: int, stream: TextIO | None = None) -> None:
        self.total, self.done, self.stream = total, 0, stream or sys.stderr
        self.tty = self.stream.isatty()

    def step(self, text: str) -> None:
        self.done += 1
        width = 30
        filled = width * self.done // max(self.total, 1)
        line = f"[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} {text}"
        self.stream.write(("\r" + line[:120].ljust(120)) if self.tty else line + "\n")
        if self.tty and self.done == self.total:
            self.stream.write("\n")
        self.stream.flush()


async def evaluate(
    options: EvalOptions, settings: Settings, progress: Callable[[int], Bar] | None = None
) -> Outcome:
    """Run the suite's selected prompts through the policies (the Python entry point; `limner eval` calls it)."""
    # imported here: a mistyped option is answered before the server's modules load
    from mcp import Client

    from server.app import build_server

    suite, chosen, made_with = check(options, settings)
    out = options.out.expanduser().resolve()
    done = prepare_out(out, made_with, options.force)
    todo = [(p, policy) for p in chosen for policy in options.policies if (p.line, policy) not in done]
    skipped = len(chosen) * len(options.policies) - len(todo)
    for problem in suite.problems:
        print(f"limner eval: left out {problem}", file=sys.stderr)
    if skipped:
        print(
            f"limner eval: {skipped} (prompt, policy) pairs finished earlier in {out}: not redone",
            file=sys.stderr,
        )
    bar = (progress or Bar)(len(todo))
    seconds = {"start": 0.0, "pairs": 0.0}
    if todo:
        started = time.perf_counter()
        async with Client(build_server(settings)) as client:
            seconds["start"] = round(time.perf_counter() - started, 4)
            started = time.perf_counter()
            with (out / "results.jsonl").open("a", encoding="utf-8") as results:
                try:
                    for prompt, policy in todo:
                        record = await run_pair(client, prompt, policy, options, out)
                        append(results, record)
                        done[(prompt.line, policy)] = record
                        verdict = "error" if record["error"] else "pass" if record["passed"] else "fail"
                        bar.step(f"line {prompt.line} {policy}: {verdict} ({record['wall_s']:.1f} s)")
                finally:  # ended or stopped (Ctrl-C): what was written is on disk
                    results.flush()
                    os.fsync(results.fileno())
            seconds["pairs"] = round(time.perf_counter() - started, 4)
    started = time.perf_counter()
    records = sorted(done.values(), key=lambda r: (r["line"], policies.POLICIES.index(r["policy"])))
    meta = {**made_with, "problems": list(suite.problems), "policies": list(options.policies)}
    rows = report.write(out, records, meta)
    seconds["report"] = round(time.perf_counter() - started, 4)
    return Outcome(out, records, len(todo), skipped, list(suite.problems), rows, seconds)


def run_eval(options: EvalOptions, settings: Settings) -> Outcome:
    """`evaluate` from synchronous code."""
    import anyio

    return anyio.run(evaluate, options, settings)

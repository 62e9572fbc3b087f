"""The policies: scripted agents that drive limner's tools through an MCP client, as an agent would. No
language model is involved; each policy is the plain code below.

- single: generate one image (the prompt's seed), judge it.
- best_of_n: generate n candidates (seeds seed..seed+n-1, so the single image is candidate 0), judge them in
  one call with the suite line's expectations, keep judge's best.
- loop: best_of_n, then up to `rounds` rounds while the best image fails an expectation. Each round follows
  judge's next step for the best image's first failing expectation, mechanically:
    refine_region: repaint the instance judge located (its mask; without one, the mask `locate` finds for
      the object, else judge's box) with judge's prompt for it;
    regenerate (a missing object, a wrong count or position): generate n new candidates (new seeds) with
      every failing expectation's facts put first in the prompt ("exactly 2 red apple; ...").
  The round's images are judged together with the best so far, and judge's best of them is kept, so a round
  never makes the result worse by judge's ranking.

Every tool result is kept (`calls`), with the seconds the tool reports for its stages (`timings`): the sum,
without time queued behind other work and without model loading (a one-off per run, counted apart as
`load_s`), is the policy's model time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mcp import Client

from tools.judge.expect import phrase
from tools.judge.types import Expectation

POLICIES = ("single", "best_of_n", "loop")
NOT_WORK = {"queue"}  # timings that are waiting, not work
LOADING = "load"  # timings named load* are model loading: a one-off per run, kept apart
JOB_WAIT_S = 600.0


class PolicyError(RuntimeError):
    """A tool answered with an error: the (prompt, policy) pair is recorded as failed, the run goes on."""


@dataclass
class Trace:
    """Everything one policy did for one prompt."""

    calls: list[dict[str, Any]] = field(default_factory=list)  # tool, arguments, seconds, structured result
    images_generated: int = 0
    rounds_used: int = 0
    actions: list[str] = field(default_factory=list)  # what each round did, in words

    @property
    def model_s(self) -> float:
        return round(sum(c["model_s"] for c in self.calls), 4)

    @property
    def load_s(self) -> float:
        return round(sum(c["load_s"] for c in self.calls), 4)

    @property
    def tool_wall_s(self) -> float:
        return round(sum(c["wall_s"] for c in self.calls), 4)


@dataclass(frozen=True)
class Best:
    """The image a policy keeps, and judge's answer about it."""

    id: str
    path: str
    judgement: dict[str, Any]


async def call(client: Client, trace: Trace, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """One tool call, timed and kept; a job handle (work past max_wait_s) is waited for."""
    started = time.perf_counter()
    result = await client.call_tool(tool, arguments)
    data = _structured(tool, result)
    while data.get("status") == "running" and data.get("job"):
        waited = await client.call_tool(
            "jobs", {"action": "wait", "job_id": data["job"]["job_id"], "timeout_s": JOB_WAIT_S}
        )
        answer = _structured("jobs", waited)
        job = answer["jobs"][0]
        if job["status"] in ("failed", "cancelled"):
            raise PolicyError(f"{tool}: job {job['job_id']} {job['status']}: {job.get('error')}")
        data = answer["result"] or data
    wall = time.perf_counter() - started
    timings = data.get("timings", {})
    model = sum(v for k, v in timings.items() if k not in NOT_WORK and not k.startswith(LOADING))
    load = sum(v for k, v in timings.items() if k.startswith(LOADING))
    trace.calls.append(
        {
            "tool": tool,
            "arguments": arguments,
            "wall_s": round(wall, 4),
            "model_s": round(model, 4),
            "load_s": round(load, 4),
            "result": data,
        }
    )
    return data


def _structured(tool: str, result: Any) -> dict[str, Any]:
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content)
        raise PolicyError(f"{tool}: {text}")
    if result.structured_content is None:
        raise PolicyError(f"{tool}: no structured result")
    return result.structured_content


async def generate(client: Client, trace: Trace, prompt: str, seed: int, n: int) -> list[tuple[str, str]]:
    data = await call(client, trace, "generate", {"prompt": prompt, "seed": seed, "n": n})
    trace.images_generated += len(data["candidates"])
    return [(c["id"], c["path"]) for c in data["candidates"]]


async def judge(
    client: Client, trace: Trace, prompt: str, images: Sequence[tuple[str, str]], expect: list[dict[str, Any]]
) -> Best:
    """Judge the images with the expectations; judge's best of them."""
    data = await call(
        client, trace, "judge", {"images": [i for i, _ in images], "prompt": prompt, "expect": expect}
    )
    best = data["best"] if data.get("best") is not None else 0
    return Best(images[best][0], images[best][1], data["judgements"][best])


def failing(judgement: dict[str, Any]) -> list[dict[str, Any]]:
    """The best image's failing expectation items (judge lists failing items first, expectations leading)."""
    return [it for it in judgement["items"] if it["check"].startswith("expect[") and not it["passed"]]


async def single(client: Client, prompt: str, expect: list[dict[str, Any]], seed: int) -> tuple[Best, Trace]:
    trace = Trace()
    images = await generate(client, trace, prompt, seed, 1)
    return await judge(client, trace, prompt, images, expect), trace


async def best_of_n(
    client: Client, prompt: str, expect: list[dict[str, Any]], seed: int, n: int
) -> tuple[Best, Trace]:
    trace = Trace()
    images = await generate(client, trace, prompt, seed, n)
    return await judge(client, trace, prompt, images, expect), trace


async def loop(
    client: Client, prompt: str, expect: list[dict[str, Any]], seed: int, n: int, rounds: int
) -> tuple[Best, Trace]:
    trace = Trace()
    images = await generate(client, trace, prompt, seed, n)
    best = await judge(client, trace, prompt, images, expect)
    for r in range(1, rounds + 1):
        wrong = failing(best.judgement)
        if not wrong:
            break
        trace.rounds_used = r
        step = wrong[0].get("next_step") or {}
        if step.get("action") == "refine_region":
            made = await _refine(client, trace, best, step, expect, seed + r)
        else:
            facts = _missing_facts(best.judgement, expect)
            stronger = f"{facts}; {prompt}" if facts else prompt
            trace.actions.append(f"round {r}: regenerate {n} with {facts or 'the same prompt'!r} first")
            made = await generate(client, trace, stronger, seed + r * n, n)
        if not made:  # nothing to try this round: another would be the same
            break
        # judged against the original prompt, beside the best so far: judge's best of them is kept
        best = await judge(client, trace, prompt, [(best.id, best.path), *made], expect)
    return best, trace


async def _refine(
    client: Client, trace: Trace, best: Best, step: dict[str, Any], expect: list[dict[str, Any]], seed: int
) -> list[tuple[str, str]]:
    region: dict[str, Any] = {}
    if step.get("mask"):
        region["mask"] = step["mask"]
    else:  # no segmenter mask in judge's step: ask locate for the object's mask
        entry = _entry_of(best.judgement, step, expect)
        if entry is not None:
            found = await call(client, trace, "locate", {"image": best.id, "objects": [entry["object"]]})
            if found.get("found"):
                region["mask"] = found["found"][0]["mask_id"]
        if not region and step.get("bbox"):
            region["bbox"] = step["bbox"]
    if not region:  # nothing to point at: judge gave neither mask nor box
        trace.actions.append("refine_region step without a region: skipped")
        return []
    trace.actions.append(f"refine_region {best.id} {sorted(region)} with {step.get('prompt')!r}")
    data = await call(
        client,
        trace,
        "refine_region",
        {"image": best.id, "prompt": step.get("prompt") or "", "seed": seed, **region},
    )
    trace.images_generated += 1
    return [(data["image"]["id"], data["image"]["path"])]


def _entry_of(judgement: dict[str, Any], step: dict[str, Any], expect: list[dict[str, Any]]) -> dict | None:
    for item in judgement["items"]:
        if item.get("next_step") == step and item["check"].startswith("expect["):
            return expect[int(item["check"][len("expect[") : -1])]
    return None


def _missing_facts(judgement: dict[str, Any], expect: list[dict[str, Any]]) -> str:
    """Every failing expectation as prompt words, in judge's order: 'exactly 2 red apple, a cup left of a dog'."""
    facts = []
    for item in failing(judgement):
        k = int(item["check"][len("expect[") : -1])
        facts.append(phrase(Expectation(**expect[k])))
    return ", ".join(dict.fromkeys(facts))

"""`limner demo`: the context-gap loop, scripted, through the MCP client over stdio, then the gallery.

It spawns `python -m server.cli serve` with the same settings (flags forwarded, environment inherited) and
runs: remember a preference, recall it, generate candidates, judge and rank them, refine a region of the
best, judge the refinement against the original, remember the outcome, recall it. On the tiny offline models
the whole loop takes seconds. Each step is reported on stderr; the gallery's path is the one line on stdout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

from server.call import JOB_WAIT_S, JobFailed, follow_job
from server.settings import Settings

PROMPT = "a red bicycle leaning against a white wall, warm golden-hour light, minimal composition"
QUESTIONS = ["a red bicycle", "a white wall", "warm golden-hour light"]
PREFERENCE = "The user prefers warm golden-hour light and minimal compositions with one clear subject."
SCOPE = "limner-demo"
CANDIDATES = 3
SEED = 7


class DemoError(RuntimeError):
    """A step of the demo failed; the message says which and why."""


def say(message: str) -> None:
    print(f"limner demo: {message}", file=sys.stderr, flush=True)


def run_demo(settings: Settings, serve_flags: Sequence[str]) -> int:
    import anyio

    try:
        summary = anyio.run(_demo, settings, list(serve_flags))
    except Exception as exc:
        # a step's DemoError, or the server gone: one line, not the task groups' tracebacks
        while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
            exc = exc.exceptions[0]
        say(f"failed: {exc}" if isinstance(exc, DemoError) else f"failed: {type(exc).__name__}: {exc}")
        return 1
    print(summary["gallery_path"])
    return 0


async def _demo(settings: Settings, serve_flags: list[str]) -> dict[str, Any]:
    from mcp import Client, StdioServerParameters

    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "server.cli", "serve", *serve_flags],
        env=dict(os.environ),  # the same LIMNER_* settings as this command
    )
    say(f"starting the server over stdio (home {settings.home}, profile {settings.profile})")
    async with Client(params, read_timeout_seconds=JOB_WAIT_S + 60) as client:
        return await Loop(client).run()


class Loop:
    def __init__(self, client: Any) -> None:
        self.client = client
        self.tools: set[str] = set()
        self.skipped: list[str] = []
        self.made: list[str] = []

    async def call(self, tool: str, arguments: dict[str, Any]) -> dict[str, Any] | None:
        """Call a tool (waiting on its job if it answers 'running'); None when the server lacks it."""
        if tool not in self.tools:
            say(f"skipping {tool}: this server has no {tool!r} tool yet")
            self.skipped.append(tool)
            return None
        started = time.perf_counter()
        result = await self.client.call_tool(tool, arguments)
        if result.is_error:
            raise DemoError(f"{tool} answered with an error: {_joined(result)}")
        try:
            result = await follow_job(self.client, result)
        except JobFailed as exc:
            raise DemoError(f"{tool}: {exc}") from None
        if result.is_error:
            raise DemoError(f"{tool}'s job answered with an error: {_joined(result)}")
        out = result.structured_content or {}
        say(f"{tool} done in {time.perf_counter() - started:.2f} s")
        return out

    async def run(self) -> dict[str, Any]:
        self.tools = {t.name for t in (await self.client.list_tools()).tools}

        # 1. what the user likes, kept for later sessions
        await self.call(
            "remember", {"text": PREFERENCE, "kind": "preference", "tags": ["demo"], "scope": SCOPE}
        )
        recalled = await self.call(
            "recall", {"query": "what light does the user prefer", "k": 3, "scope": SCOPE}
        )
        if recalled is not None:
            say(f"recalled {len(recalled.get('memories', []))} memories before writing the prompt")

        # 2. candidates
        generated = await self.call("generate", {"prompt": PROMPT, "n": CANDIDATES, "seed": SEED})
        if generated is None:
            raise DemoError("the server has no generate tool; nothing to show")
        candidates = [c["id"] for c in generated["candidates"]]
        self.made.extend(candidates)
        say(f"generated {len(candidates)} candidates with {generated.get('model')}: {', '.join(candidates)}")

        # 3. judge and rank them
        best, bbox, fix_prompt = candidates[0], None, "a crisp, sharp red bicycle wheel"
        judged = await self.call("judge", {"images": candidates, "prompt": PROMPT, "questions": QUESTIONS})
        if judged is not None:
            best = judged.get("best_id") or candidates[(judged.get("ranking") or [0])[0]]
            say(f"judge ranked {judged.get('ranking')}; best {best}")
            bbox, suggested = suggested_fix(judged, best)
            fix_prompt = suggested or fix_prompt

        # 4. refine a region of the best, then judge the refinement against the original
        final = best
        if bbox is None:
            bbox = centre_box(generated["candidates"][0]["width"], generated["candidates"][0]["height"])
        refined = await self.call(
            "refine_region", {"image": best, "bbox": bbox, "prompt": fix_prompt, "seed": SEED}
        )
        if refined is not None:
            final = refined["image"]["id"]
            masks = (refined.get("mask_id"), refined.get("region_mask_id"))
            self.made.extend(i for i in (*masks, refined.get("input_id"), final) if i)
            say(f"refined {bbox} of {best} -> {final}")
            again = await self.call(
                "judge",
                {
                    "images": [final],
                    "prompt": PROMPT,
                    "questions": QUESTIONS,
                    "original": best,
                    "mask": refined["mask_id"],
                },
            )
            if again is not None:
                verdicts = [j.get("verdict") for j in again.get("judgements", [])]
                say(f"judge on the refinement: {verdicts}")

        # 5. remember the outcome, and find it again
        await self.call(
            "remember",
            {
                "text": f"Demo: '{PROMPT}', seed {SEED}, refined {bbox}; final image {final}.",
                "kind": "generation",
                "image": final,
                "tags": ["demo"],
                "scope": SCOPE,
            },
        )
        recalled = await self.call("recall", {"query": "red bicycle golden-hour", "k": 3, "scope": SCOPE})
        if recalled is not None:
            say(f"recall found {len(recalled.get('memories', []))} memories")

        # 6. the session log (with the gallery the server keeps) and the final image's lineage
        log = json.loads(_text(await self.client.read_resource("limner://session/log")))
        lineage = json.loads(_text(await self.client.read_resource(f"limner://images/{final}/lineage")))
        say(f"lineage of {final}: " + " <- ".join(f"{a['id']} ({a['tool']})" for a in lineage["lineage"]))
        if self.skipped:
            say(f"skipped, not on this server: {', '.join(sorted(set(self.skipped)))}")
        say(f"gallery: {log['gallery_path']}")
        return {
            "gallery_path": log["gallery_path"],
            "final": final,
            "made": self.made,
            "skipped": self.skipped,
        }


def suggested_fix(judged: dict[str, Any], best: str) -> tuple[list[int] | None, str | None]:
    """judge's refine_region suggestion for the best image: (bbox, prompt), or (None, None)."""
    for judgement in judged.get("judgements", []):
        if judgement.get("id") != best:
            continue
        for item in judgement.get("items", []):
            step = item.get("next_step") or {}
            if step.get("action") == "refine_region" and step.get("bbox"):
                return list(step["bbox"]), step.get("prompt")
    return None, None


def centre_box(width: int, height: int) -> list[int]:
    return [width // 4, height // 4, width - width // 4, height - height // 4]


def _joined(result: Any) -> str:
    return " ".join(getattr(c, "text", "") for c in result.content)


def _text(resource: Any) -> str:
    return resource.contents[0].text

"""Benchmark for the stdio line check (server/stdio.py): what it costs per line next to the SDK's own parse.

    .venv/bin/python bench/bench_stdio.py [--runs 15]

Every line a client writes is checked before the SDK reads it, so a line the SDK would drop without a word is
answered instead. The check must cost less than the SDK's own parse of the same line. Figures, p50 of --runs:
(a) a 10 MB line (a `remember` call with an inline image, the largest lines hosts send);
(b) deeply nested lines: 250 levels (past the SDK's parser, which refuses them at 200), 1,000 levels (past
    json.loads's stack) and 10 MB of brackets; the check answers them with the request's id;
(c) a small tools/list line, the common case.
Each figure names the check's time (`check`) and the SDK parse of the same line (`sdk_parse`,
`jsonrpc_message_adapter.validate_json`, which raises for the nested ones); where the check raised instead of
answering (the fault of issue 23: the server ended), `check_raised` says with what.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import mcp_types as types  # noqa: E402

from server.stdio import _refusal  # noqa: E402


def emit(name: str, value: float, unit: str, target: str | None = None, **extra: object) -> None:
    line = {"name": name, "value": round(value, 4), "unit": unit, **({"target": target} if target else {})}
    print(json.dumps({**line, **extra}), flush=True)


def timed(call: Callable[[], object], runs: int) -> tuple[float, str | None]:
    """p50 milliseconds of `call`, and the exception it raised (by name), if any."""
    times, raised = [], None
    for _ in range(runs):
        started = time.perf_counter()
        try:
            call()
        except BaseException as exc:  # the check's old RecursionError is a figure here, not a crash
            raised = type(exc).__name__
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, raised


def lines() -> dict[str, str]:
    image = "data:image/png;base64," + base64.b64encode(os.urandom(7_500_000)).decode()
    remember = {"name": "remember", "arguments": {"text": "a board", "kind": "reference", "image": image}}
    call = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": remember}

    def nested(depth: int) -> str:
        return (
            '{"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "recall", "arguments": '
            '{"query": ' + "[" * depth + "]" * depth + "}}}\n"
        )

    return {
        "10mb_image_line": json.dumps(call) + "\n",
        "nested_250": nested(250),
        "nested_1000": nested(1000),
        "nested_10mb": nested(5_000_000),
        "tools_list": json.dumps({"jsonrpc": "2.0", "id": 2, "method": "tools/list", "params": {}}) + "\n",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    sdk = types.jsonrpc_message_adapter
    for name, line in lines().items():
        check, raised = timed(lambda line=line: _refusal(line), args.runs)
        parse, sdk_raised = timed(lambda line=line: sdk.validate_json(line, by_name=False), args.runs)
        answer = None if raised else _refusal(line)
        extra: dict[str, object] = {"line_bytes": len(line.encode())}
        if raised:
            extra["check_raised"] = raised
        elif answer is not None:
            extra["answer"] = {"id": answer["id"], "code": answer["error"]["code"]}
        if sdk_raised:
            extra["sdk_raised"] = sdk_raised
        emit(f"stdio_check_{name}", check, "ms", "< sdk_parse", sdk_parse=round(parse, 4), **extra)


if __name__ == "__main__":
    main()

"""Argument checks that hold for every tool, made before it runs (by the session-log middleware).

1. An argument the tool does not take is refused, naming the closest one it does: the SDK drops unknown
   names without a word, so `judge(orignal=...)` judged without an original and passed.
2. The tool's own argument model is run first here, so a wrong type or range comes back as one line per
   field with what was sent, in place of pydantic's multi-line dump with its documentation links.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from pydantic import ValidationError
from pydantic_core import ErrorDetails

MAX_LISTED = 4  # field errors (and unknown names) spelled out; the rest are counted
MAX_NAME = 60  # characters of an unknown argument's name shown back


def argument_problem(tool: Any, arguments: dict[str, Any]) -> str | None:
    """What is wrong with `arguments` for `tool` (the SDK's registered tool), or None."""
    known = list((tool.parameters or {}).get("properties", {}))
    unknown = [name for name in arguments if name not in known]
    if unknown:
        named = []
        for name in unknown[:MAX_LISTED]:  # names are the client's text: a few, each cut short, come back
            close = difflib.get_close_matches(name[:MAX_NAME], known, n=1, cutoff=0.6)
            shown = (
                repr(name) if len(name) <= MAX_NAME else f"{name[:MAX_NAME]!r}... ({len(name)} characters)"
            )
            named.append(shown + (f" (did you mean {close[0]!r}?)" if close else ""))
        if len(unknown) > MAX_LISTED:
            named.append(f"and {len(unknown) - MAX_LISTED} more")
        return (
            f"unknown argument{'s' if len(unknown) > 1 else ''} {', '.join(named)}; "
            f"{tool.name} takes: {', '.join(known)}."
        )
    try:
        tool.fn_metadata.validate_arguments(arguments)
    except ValidationError as exc:
        return _summary(exc.errors(include_url=False))
    return None


def _summary(errors: list[ErrorDetails]) -> str:
    """One line per field. Of a union's branches (`list[Placement]`, `literal['auto']`) only the deepest
    errors of each argument are kept: the branch the caller meant got furthest. Messages for the same field
    are joined with "or"."""
    found: dict[str, list[tuple[int, str, ErrorDetails]]] = {}
    for error in errors:
        parts = [p for p in error["loc"] if isinstance(p, int) or str(p).isidentifier()]  # drop branch tags
        path = "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" if i else str(p) for i, p in enumerate(parts)
        )
        found.setdefault(str(parts[0]) if parts else "arguments", []).append(
            (len(parts), path or "arguments", error)
        )
    lines: dict[str, list[str]] = {}
    sent: dict[str, Any] = {}
    for group in found.values():
        deepest = max(depth for depth, _, _ in group)
        for depth, path, error in group:
            if depth == deepest:
                lines.setdefault(path, []).append(_message(path, error))
                sent.setdefault(path, error.get("input"))
    said = [
        f"{path}: {' or '.join(dict.fromkeys(messages))}"
        + ("" if messages == ["required; pass it"] else f" (got {_shown(sent[path])})")
        for path, messages in lines.items()
    ]
    if len(said) > MAX_LISTED:
        said = [*said[:MAX_LISTED], f"and {len(said) - MAX_LISTED} more"]
    return "; ".join(said) + "."


def _message(path: str, error: ErrorDetails) -> str:
    if error["type"] == "missing":
        return "required; pass it"
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ").rstrip(".")
    message = message.removeprefix(f"{path}: ")  # the model's own message may name the field already
    return f"{message[:1].lower()}{message[1:]}"


def _shown(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."

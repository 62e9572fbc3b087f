"""The session log: every tool call one server process handled, with the image ids it used and made.

The log is one run of the server process. Each entry is kept in memory (the `limner://session/log`
resource and the gallery read it) and appended as one JSON line to `LIMNER_HOME/sessions/<id>.jsonl`, so a
run can be looked at after the process is gone: the file is the operator's full record, every client's calls.
Each entry names its `owner`, the client session that made the call (server/context.py `owner`: "" for stdio's
one connection, `http:<Mcp-Session-Id>` for an HTTP session, `http:` for HTTP clients without one), and a
reader asks for one owner's entries (`snapshot(owner)`), so a session sees only its own calls. A page key
(`page_key`) is an unguessable name for one owner's gallery page, for a browser that has no MCP session.
Plain code: no MCP here; the server's middleware calls `SessionLog.record` once per `tools/call`.

Bounded, whatever a client sends: an entry keeps a summary of the arguments (long strings shortened, long
lists and objects cut to their first items and a count, deep nesting cut, MAX_ARGUMENTS_CHARS in all), at
most MAX_IDS image ids each way, an error up to MAX_ERROR_CHARS and a result up to MAX_RESULT_CHARS. The
log keeps its latest MAX_LOG_BYTES of entries in memory; on disk the file is rotated at that size to
`<id>.jsonl.1` (the one before it is dropped), so a session holds at most twice that on disk.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import suppress
from itertools import islice
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tools.core.images import ID_PATTERN, URI_PREFIX

MAX_ARG_CHARS = 300  # longer argument strings (data URIs, base64) are shortened in the log
MAX_ARGUMENTS_CHARS = 4_000  # the arguments' summary in one entry, as JSON
MAX_ITEMS = 20  # items of one list or object kept in the summary; the rest are counted
MAX_DEPTH = 8  # lists and objects nested deeper are summarised as a note
MAX_IDS = 64  # image ids kept per entry, each way
MAX_RESULT_CHARS = 64_000  # a larger structured result is kept as a note instead
MAX_LOG_BYTES = 4 * 2**20  # entries kept in memory, and the size at which the log file is rotated
SCORE_KEYS = ("score", "overall", "rank", "verdict", "passed")
IMAGE_KEYS = ("id", "image_id", "image")

Status = Literal["ok", "running", "tool_error", "error", "cancelled"]
MAX_ERROR_CHARS = 500  # an error is kept whole up to this: its reason is what the log is read for


class LogEntry(BaseModel):
    seq: int = Field(description="1 for the first tool call the server process handled.")
    owner: str = Field(
        default="",
        description='The client session that made the call: "" (stdio), http:<Mcp-Session-Id>, or http: (an HTTP '
        "client without a session).",
    )
    tool: str
    arguments: dict[str, Any] = Field(
        description="The arguments as sent, summarised: long strings shortened, long lists and objects cut to "
        "their first items and a count, deep nesting cut."
    )
    started: float = Field(description="Unix time the call arrived.")
    duration_s: float
    status: Status = Field(
        description="ok; running (answered with a job handle); tool_error; error; cancelled (by the client, or "
        "its connection closed)."
    )
    error: str | None = Field(default=None, description="Why the call failed (tool_error or error).")
    inputs: list[str] = Field(default_factory=list, description="Image ids the call was given.")
    outputs: list[str] = Field(default_factory=list, description="Image ids the call made or returned.")
    result: dict[str, Any] | None = Field(default=None, description="The structured result (if small).")


class SessionLog:
    """One server process's tool calls, in order. Thread-safe appends; entries are never changed. The oldest
    are rotated out past `max_bytes` (see the module's docstring)."""

    def __init__(self, home: Path, max_bytes: int = MAX_LOG_BYTES) -> None:
        self.id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)
        self.started = time.time()
        self.path = home / "sessions" / f"{self.id}.jsonl"
        self.gallery_path = home / "gallery" / f"{self.id}.html"
        self.max_bytes = max_bytes
        self.rotated_out = 0  # entries dropped from memory, oldest first
        self._entries: deque[tuple[LogEntry, int]] = deque()  # each with its line's size in bytes
        self._held = 0  # bytes of the entries in memory
        self._written = 0  # bytes in the current log file
        self._seq = 0
        self._lock = threading.Lock()
        self._page_keys: dict[str, str] = {}  # owner -> its gallery page's key
        self._page_owners: dict[str, str] = {}  # key -> owner

    @property
    def seq(self) -> int:
        """The seq of the latest entry: it changes whenever the log does."""
        return self._seq

    def page_key(self, owner: str) -> str:
        """The unguessable name of `owner`'s gallery page (128 random bits), the same for the process's life."""
        with self._lock:
            key = self._page_keys.get(owner)
            if key is None:
                key = secrets.token_hex(16)
                self._page_keys[owner], self._page_owners[key] = key, owner
            return key

    def page_owner(self, key: str) -> str | None:
        """Whose gallery page `key` names; None for a key this process never gave out."""
        with self._lock:
            return self._page_owners.get(key)

    def record(
        self,
        tool: str,
        arguments: dict[str, Any] | None,
        started: float,
        duration_s: float,
        *,
        result: dict[str, Any] | None = None,
        is_error: bool = False,
        error: str | None = None,
        reason: str | None = None,
        cancelled: bool = False,
        owner: str = "",
    ) -> LogEntry:
        """Append one call of `owner`'s. `result` is the structured content of a successful call; `error` an
        exception that escaped the tool, `reason` the text of a tool error."""
        arguments = arguments or {}
        inputs = image_ids(arguments)
        outputs = [i for i in image_ids(result) if i not in inputs] if result else []
        if cancelled:
            status: Status = "cancelled"
        elif error is not None:
            status = "error"
        elif is_error:
            status = "tool_error"
        elif result and result.get("status") == "running":
            status = "running"
        else:
            status = "ok"
        problem = error or reason
        summary = summarise(arguments)
        with self._lock:
            self._seq += 1
            entry = LogEntry(
                seq=self._seq,
                owner=owner,
                tool=shorten(tool),
                arguments=summary if isinstance(summary, dict) else {"arguments": summary},
                started=round(started, 3),
                duration_s=round(duration_s, 4),
                status=status,
                error=_clip(problem, MAX_ERROR_CHARS) if problem else None,
                inputs=inputs,
                outputs=outputs,
                result=result,
            )
            text = entry.model_dump_json()
            # a line over the limit may owe it to the result: measure the result's share
            if result is not None and len(text) > MAX_RESULT_CHARS:
                rest = entry.model_copy(update={"result": None}).model_dump_json()
                if len(text) - len(rest) + len("null") > MAX_RESULT_CHARS:
                    note = {"note": f"result over {MAX_RESULT_CHARS} characters; not kept in the log"}
                    entry = entry.model_copy(update={"result": note})
                    text = entry.model_dump_json()
            line = (text + "\n").encode("utf-8")
            self._entries.append((entry, len(line)))
            self._held += len(line)
            while self._held > self.max_bytes and len(self._entries) > 1:
                _, size = self._entries.popleft()
                self._held -= size
                self.rotated_out += 1
            self._append(line)
        return entry

    def _append(self, line: bytes) -> None:
        """Write one line to the log file, first rotating it to `<id>.jsonl.1` when the line would take it
        past max_bytes."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._written and self._written + len(line) > self.max_bytes:
            with suppress(FileNotFoundError):  # removed meanwhile: the new file starts empty anyway
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            self._written = 0
        with self.path.open("ab") as fh:
            fh.write(line)
        self._written += len(line)

    def snapshot(self, owner: str | None = None) -> list[LogEntry]:
        """The entries in memory: `owner`'s, or everyone's for None."""
        with self._lock:
            return [entry for entry, _ in self._entries if owner is None or entry.owner == owner]

    def image_ids(self, owner: str | None = None) -> list[str]:
        """Every image `owner`'s calls (everyone's for None) touched, in order of first appearance (outputs
        before later inputs)."""
        seen: dict[str, None] = {}
        for entry in self.snapshot(owner):
            for image_id in [*entry.inputs, *entry.outputs]:
                seen.setdefault(image_id, None)
        return list(seen)


def image_ids(value: Any, limit: int = MAX_IDS, scanned: int = 10_000) -> list[str]:
    """Store ids found in a JSON value (bare ids and limner:// URIs), each once, in order: at most `limit`,
    among its first `scanned` values (no tool takes or makes more images than that)."""
    found: dict[str, None] = {}
    for text in _strings(value, scanned):
        if len(text) not in _ID_LENGTHS:  # cheaper than the pattern, for the many strings that are not ids
            continue
        candidate = text.removeprefix(URI_PREFIX)
        if ID_PATTERN.match(candidate):
            found.setdefault(candidate, None)
            if len(found) >= limit:
                break
    return list(found)


def _strings(value: Any, limit: int) -> Iterator[str]:
    """The strings in a JSON value, depth first, among its first `limit` values; no recursion, so any
    nesting, and nothing past the limit is touched."""
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack and limit > 0:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
            continue
        limit -= 1
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict):
            stack.append(iter(item.values()))
        elif isinstance(item, list | tuple):
            stack.append(iter(item))


_END = object()
_ID_LENGTHS = (len("img_") + 16, len(URI_PREFIX) + len("img_") + 16)


def _clip(text: str, limit: int) -> str:
    """`text` up to `limit` characters (a lone surrogate as its escape), then how long it was."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def shorten(text: str) -> str:
    """A string over MAX_ARG_CHARS as its start and its length (a lone surrogate as its escape)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text[:80] + f"... ({len(text)} characters)" if len(text) > MAX_ARG_CHARS else text


def summarise(value: Any, budget: int = MAX_ARGUMENTS_CHARS) -> Any:
    """What a client sent, in at most `budget` characters of JSON: strings shortened (`shorten`; to 80
    characters once the budget runs low), lists and objects cut to their first MAX_ITEMS items (fewer once
    the budget is spent) and a count of the rest, nesting past MAX_DEPTH and integers past 30 digits as
    notes. Only what is kept is walked, without recursion past MAX_DEPTH. Each part is charged at least what
    it takes as JSON (with its separator), so the walk's total bounds the summary's size."""
    spent = 0
    soft = budget // 2  # past this no more items are kept; the notes closing each open level come on top

    def text(item: str) -> str:
        nonlocal spent
        item = item.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate as its escape
        if len(item) > MAX_ARG_CHARS or (len(item) > 80 and soft - spent < 2 * MAX_ARG_CHARS):
            item = item[:80] + f"... ({len(item)} characters)"
        # as JSON: quotes, separators, and an escape for each quote, backslash and control character
        plain = item.isprintable() and '"' not in item and "\\" not in item
        spent += len(item) + 4 if plain else len(json.dumps(item, ensure_ascii=False)) + 2
        return item

    def walk(item: Any, depth: int) -> Any:
        nonlocal spent
        if isinstance(item, str):
            return text(item)
        if isinstance(item, int) and not isinstance(item, bool) and item.bit_length() > 100:
            spent += 40  # ~30 digits; str() of a 4,300-digit one alone takes 4 KB
            return f"<an integer of about {int(item.bit_length() * 0.30103) + 1} digits>"
        if item is None or isinstance(item, bool | int | float):
            spent += 34  # a float's repr is at most 24 characters, an int of 100 bits 31
            return item
        if not isinstance(item, dict | list | tuple):  # not JSON (an in-process caller's object)
            return text(repr(item))
        size = len(item)
        spent += 4
        if depth >= MAX_DEPTH:
            spent += 60
            kind = "object" if isinstance(item, dict) else "list"
            return f"<{kind} of {size} items, nested deeper than {MAX_DEPTH} levels>"
        pairs = islice(item.items() if isinstance(item, dict) else enumerate(item), MAX_ITEMS)
        out: list[tuple[str, Any]] = []
        for key, part in pairs:
            if spent >= soft:
                break
            name = text(str(key)) if isinstance(item, dict) else ""
            out.append((name, walk(part, depth + 1)))
        if len(out) < size:
            out.append(("...", f"... {size - len(out)} more of {size} items"))
            spent += len(out[-1][1]) + 11
        return dict(out) if isinstance(item, dict) else [part for _, part in out]

    summary = walk(value, 0)
    if spent > budget:  # no shape tried comes near; measured, and the bound holds even so
        size = len(json.dumps(summary, ensure_ascii=False, default=str))
        if size > budget:
            return {"...": f"arguments summarised in {size} characters, over the log's {budget}; not kept"}
    return summary


def judged(entries: list[LogEntry]) -> dict[str, dict[str, Any]]:
    """What judge said about each image: the latest score, rank, verdict and passed flag per image id.

    Reads any dict in a judge result that names an image (id, image_id or image, or an image ref with an
    id) next to at least one of score, overall, rank, verdict, passed.
    """
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if entry.tool != "judge" or not entry.result:
            continue
        ranking = entry.result.get("ranking")
        for item in _dicts(entry.result):
            image_id = _named_image(item)
            found = {k: item[k] for k in SCORE_KEYS if k in item and _scalar(item[k])}
            # judge ranks by position in its `images`; a judgement names its position as `index`
            if isinstance(ranking, list) and len(ranking) > 1 and item.get("index") in ranking:
                found.setdefault("rank", ranking.index(item["index"]) + 1)
            if image_id and found:
                out.setdefault(image_id, {}).update(found, seq=entry.seq)
    return out


def _named_image(item: dict[str, Any]) -> str | None:
    for key in IMAGE_KEYS:
        value = item.get(key)
        if isinstance(value, dict):
            value = value.get("id")
        if isinstance(value, str):
            value = value.removeprefix(URI_PREFIX)
            if ID_PATTERN.match(value):
                return value
    return None


def _scalar(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) and value is not None


def _dicts(value: Any) -> Iterator[dict[str, Any]]:
    if isinstance(value, dict):
        yield value
        for item in value.values():
            yield from _dicts(item)
    elif isinstance(value, list):
        for item in value:
            yield from _dicts(item)

"""Checks of the memory tools' arguments, before the store or the embedder is touched: each raises a ToolError
naming the field, the value, the range and what to do, and returns a frozen request of plain data. Times are
parsed here (ISO 8601 or a duration back from now) against memory_store's CLOCK, so a test can move them."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, get_args

import regex
from mcp.server.mcpserver.exceptions import ToolError

from memory_store import CLOCK

Kind = Literal["fact", "preference", "reference", "generation", "critique", "plan"]
KINDS: tuple[str, ...] = get_args(Kind)
MAX_TEXT_CHARS = 8000
MAX_K = 50
MAX_TAGS = 16
MAX_IDS = 500
MAX_LISTED = 50  # forget lists at most this many of the memories it matched
MAX_REPLACES = 50
MAX_TTL_DAYS = 36500
_MEMORY_ID = re.compile(r"^mem_[0-9a-f]{16}$")
NEAR_DUPLICATE = 0.92  # cosine similarity above which a new memory is reported as a near-duplicate
DEFAULT_SCOPE = "default"
# tags and scopes: letters and digits of any script (with their combining marks, as Devanagari's vowel signs
# are) and a few joiners; never spaces, other punctuation or control characters
_TAG_JOINERS = "-_.:"
_SCOPE_JOINERS = "-_.:/"
_TAG = regex.compile(r"[\p{L}\p{N}][\p{L}\p{M}\p{N}_.:\-]*")  # 1-40 characters as given (folding can grow it)
_SCOPE = regex.compile(r"[\p{L}\p{N}][\p{L}\p{M}\p{N}_.:/\-]{0,63}")
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


# -- requests -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RememberRequest:
    text: str
    kind: str
    tags: tuple[str, ...]
    scope: str
    source: str | None
    replaces: tuple[str, ...] = ()
    expires: float | None = None


@dataclass(frozen=True)
class RecallRequest:
    query: str
    k: int
    kind: str | None
    tags: tuple[str, ...]
    scope: str | None
    since: float | None
    max_chars: int
    until: float | None = None
    include_superseded: bool = False


@dataclass(frozen=True)
class ForgetRequest:
    ids: tuple[str, ...]
    kind: str | None
    tags: tuple[str, ...]
    scope: str | None
    before: float | None
    dry_run: bool
    confirm: str | None = None
    before_given: str | None = None  # as passed: the note repeats the filter in the caller's words
    expired: bool = False

    def filter_arguments(self) -> str:
        """The filter as forget's arguments, for a note the agent can follow as written."""
        given = {
            "kind": self.kind,
            "tags": list(self.tags) or None,
            "scope": self.scope,
            "before": self.before_given,
            "expired": True if self.expired else None,
        }
        return ", ".join(f"{name}={value!r}" for name, value in given.items() if value is not None)


def check_remember(
    text: str,
    kind: str,
    tags: list[str] | None,
    scope: str | None,
    source: str | None,
    replaces: list[str] | None = None,
    expires: str | None = None,
    ttl_days: float | None = None,
    now: float | None = None,
) -> RememberRequest:
    now = CLOCK.now() if now is None else now
    if expires is not None and ttl_days is not None:
        raise ToolError(
            f"expires / ttl_days: both given ({expires!r}, {ttl_days}); give one: a date it expires "
            "('2027-01-31') or a number of days from now."
        )
    until = None
    if expires is not None:
        until = parse_moment(expires, "expires")
        if until <= now:
            raise ToolError(
                f"expires: {expires!r} is not in the future (now is {iso(now)}); give a later date or time, "
                "or ttl_days, or leave both out for a memory that does not expire."
            )
    if ttl_days is not None:
        if not 0 < ttl_days <= MAX_TTL_DAYS:
            raise ToolError(
                f"ttl_days: {ttl_days} is out of range; give more than 0 and at most {MAX_TTL_DAYS} days, "
                "or leave it out for a memory that does not expire."
            )
        until = now + ttl_days * 86400
    return RememberRequest(
        text=check_memory_text("text", text),
        kind=check_kind(kind),
        tags=check_tags(tags),
        scope=check_scope(scope) or DEFAULT_SCOPE,
        source=check_source(source),
        replaces=check_ids("replaces", replaces, MAX_REPLACES),
        expires=until,
    )


def check_ids(field: str, ids: list[str] | None, most: int) -> tuple[str, ...]:
    """Memory ids as given (stripped, without repeats): each must look like one."""
    if not ids:
        return ()
    if len(ids) > most:
        raise ToolError(f"{field}: {len(ids)} ids given; at most {most} per call.")
    out = tuple(dict.fromkeys(i.strip() for i in ids))
    for given in out:
        if not _MEMORY_ID.match(given):
            raise ToolError(
                f"{field}: {given!r} is not a memory id (mem_ and 16 hex digits); take the ids from remember "
                "or recall."
            )
    return out


def check_recall(
    query: str,
    k: int,
    kind: str | None,
    tags: list[str] | None,
    scope: str | None,
    since: str | None,
    max_chars: int,
    now: float | None = None,
    until: str | None = None,
    include_superseded: bool = False,
) -> RecallRequest:
    if not 1 <= k <= MAX_K:
        raise ToolError(f"k: {k} is out of range; ask for 1 to {MAX_K} memories.")
    start, end = check_window(since, until, now)
    return RecallRequest(
        query=check_memory_text("query", query),
        k=k,
        kind=check_kind(kind) if kind is not None else None,
        tags=check_tags(tags),
        scope=check_scope(scope),
        since=start,
        max_chars=max_chars,
        until=end,
        include_superseded=include_superseded,
    )


def check_window(
    since: str | None, until: str | None, now: float | None
) -> tuple[float | None, float | None]:
    """A creation-time range [since, until), either end open: each parsed by `parse_time`, since before until."""
    start = parse_time(since, "since", now) if since is not None else None
    end = parse_time(until, "until", now) if until is not None else None
    if start is not None and end is not None and start >= end:
        raise ToolError(
            f"since / until: since {since!r} ({iso(start)}) is not before until {until!r} ({iso(end)}); "
            "memories made from since up to (not including) until are kept: swap them or widen the range."
        )
    return start, end


def check_forget(
    ids: list[str] | None,
    kind: str | None,
    tags: list[str] | None,
    scope: str | None,
    before: str | None,
    dry_run: bool | None,
    now: float | None = None,
    confirm: str | None = None,
    expired: bool | None = None,
) -> ForgetRequest:
    has_filter = kind is not None or bool(tags) or scope is not None or before is not None or bool(expired)
    if confirm is not None and (not has_filter or dry_run is not False):
        raise ToolError(
            "confirm: only with a filter and dry_run=false; pass the confirm token a dry run with the same "
            "filter returned."
        )
    if ids and has_filter:
        raise ToolError(
            "forget: pass either ids or a filter (kind, tags, scope, before, expired), not both; "
            "recall or forget(dry_run=true) with the filter shows the ids it matches."
        )
    if not ids and not has_filter:
        raise ToolError(
            "forget: give ids=[...] (from remember or recall) or at least one filter: kind, tags, scope, "
            "before or expired=true. To clear everything, forget(before='now') (a dry run first)."
        )
    if ids and len(ids) > MAX_IDS:
        raise ToolError(f"ids: {len(ids)} ids given; at most {MAX_IDS} per call.")
    return ForgetRequest(
        ids=tuple(dict.fromkeys(i.strip() for i in ids or ())),
        kind=check_kind(kind) if kind is not None else None,
        tags=check_tags(tags),
        scope=check_scope(scope),
        before=parse_time(before, "before", now) if before is not None else None,
        # a filter can match far more than meant: it only shows what it would remove unless told otherwise
        dry_run=dry_run if dry_run is not None else not ids,
        confirm=confirm.strip() if confirm is not None else None,
        before_given=before.strip() if before is not None else None,
        expired=bool(expired),
    )


def check_memory_text(field: str, text: str) -> str:
    """A memory text or query: something visible, within MAX_TEXT_CHARS (tools.core.checks.check_text is
    for prompts, whose limit is a setting); returned stripped."""
    if not visible(text):
        raise ToolError(
            f"{field}: empty, or only whitespace and invisible characters; give the text to {_VERB[field]}."
        )
    if len(text) > MAX_TEXT_CHARS:
        raise ToolError(
            f"{field}: {len(text)} characters, above the limit of {MAX_TEXT_CHARS}; "
            "shorten it or split it into several memories."
        )
    return text.strip()


def visible(text: str) -> bool:
    """Whether `text` holds anything but whitespace and invisible format characters (zero-width space, BOM,
    word joiner: Unicode category Cf), which str.strip() keeps."""
    return any(not ch.isspace() and unicodedata.category(ch) != "Cf" for ch in text)


_VERB = {
    "text": "remember (one fact, preference, critique ...)",
    "query": "search memory for (to see memories by kind, tags, scope or time, newest first: list_memories)",
}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ToolError(f"kind: {kind!r} is not a memory kind; use one of {', '.join(KINDS)}.")
    return kind


def check_tags(tags: list[str] | None) -> tuple[str, ...]:
    """Tags as stored and matched: NFC, case-folded ("Größe" and "GRÖSSE" are one tag), without duplicates."""
    if not tags:
        return ()
    if len(tags) > MAX_TAGS:
        raise ToolError(f"tags: {len(tags)} tags given; at most {MAX_TAGS}.")
    out = []
    for tag in tags:
        given = unicodedata.normalize("NFC", tag.strip())
        folded = unicodedata.normalize("NFC", given.casefold())  # "ß" folds to "ss": count what was given
        if not (0 < len(given) <= 40 and _TAG.fullmatch(folded)):
            raise ToolError(
                f"tags: {tag!r} is not a tag{_why(given, 40, _TAG_JOINERS)}; tags are 1-40 letters or digits "
                "in any script, '-', '_', '.' or ':' (case-insensitive), starting with a letter or digit."
            )
        if folded not in out:
            out.append(folded)
    return tuple(out)


def check_scope(scope: str | None) -> str | None:
    """A scope as stored and matched: NFC (a composed and a decomposed "été" are one scope), case kept."""
    if scope is None:
        return None
    composed = unicodedata.normalize("NFC", scope)
    if not _SCOPE.fullmatch(composed):
        raise ToolError(
            f"scope: {scope!r} is not a scope name{_why(composed, 64, _SCOPE_JOINERS)}; use 1-64 letters or "
            "digits in any script, '-', '_', '.', ':' or '/', starting with a letter or digit (e.g. a project "
            f"name), or leave it out for {DEFAULT_SCOPE!r}."
        )
    return composed


def _why(value: str, longest: int, joiners: str) -> str:
    """What is wrong with a refused tag or scope, as a parenthesis for the message."""
    if not value:
        return " (it is empty)"
    if len(value) > longest:
        return f" ({len(value)} characters)"
    for ch in value:
        if not (ch in joiners or regex.match(r"[\p{L}\p{M}\p{N}]", ch)):
            return f" ({ch!r}, U+{ord(ch):04X}, is not allowed)"
    return " (it starts with a joiner or a combining mark)"


def check_source(source: str | None) -> str | None:
    if source is not None and len(source) > 2000:
        raise ToolError(
            f"source: {len(source)} characters, above the limit of 2000; give the URL or a short note."
        )
    return source.strip() or None if source is not None else None


def parse_time(value: str, field: str, now: float | None = None) -> float:
    """ISO 8601 (date or datetime; UTC when no offset) or a duration back from now ('30m', '12h', '7d')."""
    now = CLOCK.now() if now is None else now
    text = value.strip()
    if text.lower() == "now":
        return now
    match = _DURATION.match(text.lower())
    if match:
        return now - float(match.group(1)) * _SECONDS[match.group(2)]
    try:
        return _moment(text)
    except ValueError:
        raise ToolError(
            f"{field}: {value!r} is not a time; use ISO 8601 ('2026-11-23' or '2026-11-23T14:00:00Z'), "
            "a duration back from now ('30m', '12h', '7d', '2w') or 'now'."
        ) from None


def parse_moment(value: str, field: str) -> float:
    """An ISO 8601 date or datetime (UTC when no offset), and nothing relative."""
    try:
        return _moment(value.strip())
    except ValueError:
        raise ToolError(
            f"{field}: {value!r} is not a date or time; use ISO 8601, e.g. '2027-01-31' or "
            "'2027-01-31T18:00:00Z'."
        ) from None


def _moment(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def iso(moment: float, timespec: str = "seconds") -> str:
    """A time as ISO 8601 in UTC, with Z."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")

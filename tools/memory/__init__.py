"""remember / recall / forget / list_memories, and export / import: what the agent learned, kept across sessions
in the MemoryStore.

Plain functions in five modules: checks.py validates arguments (before the store or the embedder is touched)
and builds frozen requests; work.py runs remember, recall and forget on an open MemoryStore; listing.py lists
memories by filter and time, newest first, a page at a time; transfer.py exports and imports JSON Lines;
results.py holds the answers. They run blocking: call them from a
worker thread, not the event loop. Everything the server wiring uses is importable from here.
"""

from tools.memory.checks import (
    DEFAULT_SCOPE,
    KINDS,
    MAX_K,
    MAX_REPLACES,
    MAX_TEXT_CHARS,
    MAX_TTL_DAYS,
    Kind,
    check_forget,
    check_recall,
    check_remember,
    check_scope,
    iso,
    parse_time,
)
from tools.memory.listing import MAX_PAGE, ListResult, check_list, list_memories
from tools.memory.results import ForgetResult, MemoryOut, RecallResult, RememberResult
from tools.memory.transfer import (
    IMPORT_BATCH,
    ExportResult,
    ImportResult,
    check_export_path,
    check_import_path,
    export_memories,
    import_memories,
)
from tools.memory.work import forget, open_store, recall, remember

__all__ = [
    "DEFAULT_SCOPE",
    "IMPORT_BATCH",
    "KINDS",
    "MAX_K",
    "MAX_PAGE",
    "MAX_REPLACES",
    "MAX_TEXT_CHARS",
    "MAX_TTL_DAYS",
    "ExportResult",
    "ForgetResult",
    "ImportResult",
    "ListResult",
    "Kind",
    "MemoryOut",
    "RecallResult",
    "RememberResult",
    "check_export_path",
    "check_forget",
    "check_import_path",
    "check_list",
    "check_recall",
    "check_remember",
    "check_scope",
    "export_memories",
    "forget",
    "import_memories",
    "iso",
    "list_memories",
    "open_store",
    "parse_time",
    "recall",
    "remember",
]

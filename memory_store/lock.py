"""One process owns an embedded memory folder: an advisory `flock` on a lock file inside it.

The kernel drops the lock when the owner dies (even by SIGKILL), so a crash never leaves a stale lock.
The file itself is never deleted (deleting lock files races with the next opener); it holds the owner's pid.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

LOCK_NAME = "limner.lock"


class StoreLocked(RuntimeError):
    def __init__(self, folder: Path, pid: int | None) -> None:
        self.folder, self.pid = folder, pid
        owner = f"pid {pid}" if pid else "pid unknown"
        super().__init__(
            f"the memory folder {folder} is already opened by another process ({owner}); only one process "
            "may own an embedded memory. Stop that process, or use a chroma server URL to share memory."
        )


class StoreReadOnly(RuntimeError):
    def __init__(self, folder: Path, reason: str) -> None:
        self.folder = folder
        super().__init__(
            f"the memory folder {folder} is read-only ({reason}); nothing was read or changed. Make it writable, "
            "point the home folder elsewhere, or use a chroma server URL."
        )


class FolderLock:
    """Exclusive, non-blocking ownership of `folder`; `release()` (or process death) gives it up."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise StoreReadOnly(self.folder, exc.strerror or str(exc)) from exc
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise StoreLocked(self.folder, pid) from None
        if not os.access(self.folder, os.W_OK):
            self._fd = fd
            self.release()
            raise StoreReadOnly(self.folder, "no write permission on the folder")
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        raw = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return None
    return int(raw) if raw.isdigit() else None

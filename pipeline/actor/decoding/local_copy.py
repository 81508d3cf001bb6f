"""Local paths for video files: the file itself when local, else a temporary copy (the decoders need seekable local
input) in this process's folder under ``copies_root()``.

A copy is removed when its source closes, when it is garbage collected and at interpreter exit; a process killed
outright (a worker past its time budget, a replaced actor) leaves its folder behind, so every worker sweeps the
folders whose owner process is gone when it starts (``sweep_stale_copies``).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import weakref

from pipeline.io.storage import filesystem, is_local

ROOT_NAME = "sam2-video-copies"


def copies_root() -> str:
    """The folder holding one folder of copies per process of this host (under the system temp folder; by host
    name, so containers that share a temp folder but not their process ids never sweep each other's copies)."""
    return os.path.join(tempfile.gettempdir(), ROOT_NAME, socket.gethostname() or "localhost")


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux ``/proc``), to tell a reused pid from its owner;
    ``None`` where there is no ``/proc`` or no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def _owner_tag(pid: int) -> str:
    return f"{pid}-{_start_time(pid) or 0}"


def _alive(tag: str) -> bool:
    """Whether the process that named its folder ``tag`` (``pid-starttime``) still runs."""
    pid_text, _, started = tag.partition("-")
    if not pid_text.isdigit():
        return True  # not a folder this module made: leave it
    pid = int(pid_text)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's live process
    now = _start_time(pid)
    return now is None or started in ("0", now)


def process_folder() -> str:
    """This process's folder of copies (created on first use)."""
    path = os.path.join(copies_root(), _owner_tag(os.getpid()))
    os.makedirs(path, exist_ok=True)
    return path


def sweep_stale_copies() -> list[str]:
    """Remove the folders of copies whose owner process is gone (killed before it could clean up); returns them.
    Called once by every worker when it starts."""
    root = copies_root()
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    swept = []
    for name in names:
        if not _alive(name):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
            swept.append(name)
    return swept


class LocalCopy:
    """A local path for ``uri``: the file itself when local, else a temp copy deleted on ``release`` (or when the
    copy is garbage collected or the interpreter exits, so an unclosed source does not leak disk)."""

    def __init__(self, uri: str, storage_options: dict | None) -> None:
        fs, path = filesystem(uri, storage_options)
        self._finalizer: weakref.finalize | None = None
        if is_local(uri):
            self.path = path
            return
        fd, tmp = tempfile.mkstemp(prefix="video-", suffix=os.path.splitext(path)[1], dir=process_folder())
        os.close(fd)
        self._finalizer = weakref.finalize(self, _remove, tmp)
        self.path = tmp
        try:
            fs.get_file(path, tmp)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Delete the temp copy, if any (idempotent)."""
        if self._finalizer is not None:
            self._finalizer()


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass

"""One writer per run folder: `megl train`, `evaluate` and `run-cell` hold an exclusive flock on
`<run folder>/.megl.lock` for their whole life; a second writer is refused at once (exit 2) with the
holder's PID, so a run folder's record (config, log, weights, done marker, metrics) always comes
from one run.

Why flock (as megl.gpu_slots): the kernel drops the lock when the holder exits for any reason,
SIGKILL included, so a stale lock file never blocks anyone; it only says which PID held it last.
The lock file is removed when its holder finishes (after a kill -9 it stays, harmless, and the next
writer takes it over).
"""
from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator, Sequence

from megl.errors import MEGLError

LOCK_NAME = ".megl.lock"


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "another process"


def _acquire(folder: Path, command: str) -> int:
    """The fd of `folder`'s lock file, flock-ed exclusively; MEGLError when another process holds it.
    The file is re-checked after locking: a holder that was finishing may have unlinked it, and a lock
    on an unlinked file protects nothing, so we retry on the fresh file."""
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MEGLError(f"{folder}: run folder in use by another writer ({_holder(path)} holds {path}); "
                            f"megl {command} refused: wait for it to finish, or stop it") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            return fd
        os.close(fd)


def _release(folder: Path, fd: int) -> None:
    (folder / LOCK_NAME).unlink(missing_ok=True)  # while still held: the next writer never locks a doomed file
    os.close(fd)


@contextmanager
def run_folder_lock(folder: str | os.PathLike, command: str, keep_if: str | None = None) -> Iterator[Path]:
    """Create `folder` if needed and hold its lock for the block. When the block fails and this call
    created the folder, the folder is removed (no empty or half-made run folder is left), unless it
    holds `keep_if` (e.g. a checkpoint that `--resume` continues)."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    fd = _acquire(folder, command)
    try:
        yield folder
    except BaseException:
        if created and not (keep_if and (folder / keep_if).exists()):
            _release(folder, fd)
            fd = -1
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        if fd >= 0:
            _release(folder, fd)


@contextmanager
def run_folders_lock(folders: Sequence[str | os.PathLike], command: str) -> Iterator[list[Path]]:
    """`run_folder_lock` on every folder (all or none: a refused one releases those already held)."""
    with ExitStack() as stack:
        yield [stack.enter_context(run_folder_lock(f, command)) for f in folders]

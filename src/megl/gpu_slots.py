"""Give each GPU job its own GPU: one flock-ed lock file per GPU, plus CUDA_VISIBLE_DEVICES.

Snakemake only counts GPUs (`--resources gpu=4`); it never says which GPU a job gets
(snakemake issue #281). A job wrapped by `run_with_gpu` / `python -m megl.gpu_slots` takes the
first free slot 0..n-1, holds an exclusive `flock` on `<lock_dir>/gpu<i>.lock` for the job's
whole life and sees only that GPU through `CUDA_VISIBLE_DEVICES=<i>`.

Why flock: the kernel drops the lock when the last file descriptor on it closes, i.e. when the
job exits for any reason, SIGKILL and OOM-kill included, so no stale lock needs cleaning up.

Usage:
    python -m megl.gpu_slots --n-gpus 4 [--lock-dir D] [--timeout S] -- cmd args...

With 0 GPUs (the default; `MEGL_N_GPUS` unset) the command runs with no lock and an
unchanged environment, so CPU runs and scheduler-assigned GPUs (SLURM sets
CUDA_VISIBLE_DEVICES itself) pass through untouched.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import getpass
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from megl.errors import MEGLError

ENV_N_GPUS = "MEGL_N_GPUS"
ENV_LOCK_DIR = "MEGL_GPU_LOCK_DIR"
ENV_TIMEOUT = "MEGL_GPU_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 3600.0
DEFAULT_POLL_S = 0.5


class CommandError(MEGLError):
    """The wrapped command could not be started (not found, not executable)."""


def default_lock_dir() -> Path:
    """`$MEGL_GPU_LOCK_DIR`, else `/tmp/megl-gpu-locks-$USER` (node-local, one per user)."""
    env = os.environ.get(ENV_LOCK_DIR)
    if env:
        return Path(env)
    try:
        user = os.environ.get("USER") or getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        user = str(os.getuid())
    return Path(f"/tmp/megl-gpu-locks-{user}")


def n_gpus_from_env() -> int:
    """Number of GPU slots from `$MEGL_N_GPUS`; 0 (no locking) when unset or empty."""
    raw = os.environ.get(ENV_N_GPUS, "").strip()
    if not raw:
        return 0
    try:
        n = int(raw)
    except ValueError:
        raise MEGLError(f"{ENV_N_GPUS}={raw!r}: expected a non-negative integer") from None
    if n < 0:
        raise MEGLError(f"{ENV_N_GPUS}={raw!r}: expected a non-negative integer")
    return n


def lock_path(lock_dir: Path, gpu: int) -> Path:
    """The lock file of GPU `gpu`."""
    return Path(lock_dir) / f"gpu{gpu}.lock"


def _try_lock(path: Path) -> int | None:
    """Open `path` and take a non-blocking exclusive flock; the fd, or None when held elsewhere."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd


def _holders(lock_dir: Path, n_gpus: int) -> str:
    """One line per slot with what its holder wrote (pid, host), for error messages."""
    lines = []
    for i in range(n_gpus):
        try:
            text = lock_path(lock_dir, i).read_text().strip()
        except OSError:
            text = ""
        lines.append(f"  gpu{i}: {text or '?'}")
    return "\n".join(lines)


# Hand-written rather than `filelock`: that library keeps the fd private, and this fd must be
# inherited by the exec'd job so that the lock lives exactly as long as the job.
def acquire_gpu(
    n_gpus: int,
    lock_dir: Path,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
) -> tuple[int, int]:
    """Take the first free GPU slot of 0..n_gpus-1, waiting up to `timeout_s` seconds.

    Returns (gpu index, fd holding the lock); the lock is released when every copy of the fd
    is closed (normally: when the process and its children exit). Raises MEGLError naming the
    lock dir when no slot frees up in time.
    """
    if n_gpus < 1:
        raise MEGLError(f"acquire_gpu: n_gpus={n_gpus}: need at least 1 GPU to lock")
    lock_dir = Path(lock_dir)
    try:
        lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise MEGLError(f"GPU lock dir {lock_dir}: cannot create it: {e}") from e
    deadline = time.monotonic() + timeout_s
    while True:
        for gpu in range(n_gpus):
            path = lock_path(lock_dir, gpu)
            try:
                fd = _try_lock(path)
            except OSError as e:
                raise MEGLError(f"GPU lock file {path}: {e}") from e
            if fd is not None:
                # Record the holder for humans (`cat gpu0.lock`); the lock itself is the flock.
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid={os.getpid()} host={socket.gethostname()}\n".encode(), 0)
                return gpu, fd
        if time.monotonic() >= deadline:
            raise MEGLError(
                f"no free GPU among {n_gpus} after {timeout_s:g} s; lock dir {lock_dir} "
                f"(set {ENV_LOCK_DIR} / --lock-dir to change it). Holders:\n"
                + _holders(lock_dir, n_gpus)
            )
        time.sleep(max(0.0, min(poll_s, deadline - time.monotonic())))


def run_with_gpu(
    cmd: list[str],
    n_gpus: int,
    lock_dir: Path | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    poll_s: float = DEFAULT_POLL_S,
    use_exec: bool = True,
) -> int:
    """Run `cmd` on one free GPU (CUDA_VISIBLE_DEVICES=<slot>) while holding that slot's lock.

    n_gpus == 0: no lock, environment unchanged (CPU, or a GPU the scheduler already assigned).
    use_exec=True (the default) replaces this process with `cmd` via os.execvpe, with the lock
    fd inheritable: the job's own PID then holds the lock, so killing the job (even SIGKILL)
    frees the GPU, and there is no wrapper process to signal or orphan. It returns only on
    failure. use_exec=False runs `cmd` as a child (lock fd passed via pass_fds) and returns its
    exit code.
    """
    if not cmd:
        raise MEGLError("gpu_slots: no command given (put it after `--`)")
    env = dict(os.environ)
    fd = None
    if n_gpus > 0:
        gpu, fd = acquire_gpu(n_gpus, lock_dir or default_lock_dir(), timeout_s, poll_s)
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        env["MEGL_GPU_SLOT"] = str(gpu)
    try:
        if use_exec:
            if fd is not None:
                os.set_inheritable(fd, True)
            sys.stdout.flush()
            sys.stderr.flush()
            try:
                os.execvpe(cmd[0], cmd, env)
            except OSError as e:
                raise CommandError(f"gpu_slots: cannot run {cmd[0]!r}: {e}") from e
        try:
            return subprocess.run(cmd, env=env, pass_fds=(fd,) if fd is not None else ()).returncode
        except OSError as e:
            raise CommandError(f"gpu_slots: cannot run {cmd[0]!r}: {e}") from e
    finally:
        if fd is not None:
            os.close(fd)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m megl.gpu_slots",
        description="Run a command on one free GPU (flock per GPU + CUDA_VISIBLE_DEVICES).",
    )
    p.add_argument("--n-gpus", type=int, default=None,
                   help=f"GPU slots on this node (default ${ENV_N_GPUS}, else 0 = no locking)")
    p.add_argument("--lock-dir", type=Path, default=None,
                   help=f"lock dir (default ${ENV_LOCK_DIR}, else /tmp/megl-gpu-locks-$USER)")
    p.add_argument("--timeout", type=float, default=None,
                   help=f"seconds to wait for a free GPU (default ${ENV_TIMEOUT}, else "
                        f"{DEFAULT_TIMEOUT_S:g})")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- command and its arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns an exit code (the command's own when not exec'd)."""
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    try:
        n_gpus = n_gpus_from_env() if args.n_gpus is None else args.n_gpus
        if n_gpus < 0:
            raise MEGLError(f"--n-gpus {n_gpus}: expected a non-negative integer")
        timeout_s = args.timeout
        if timeout_s is None:
            raw = os.environ.get(ENV_TIMEOUT, "").strip()
            try:
                timeout_s = float(raw) if raw else DEFAULT_TIMEOUT_S
            except ValueError:
                raise MEGLError(f"{ENV_TIMEOUT}={raw!r}: expected seconds") from None
        return run_with_gpu(cmd, n_gpus, args.lock_dir, timeout_s=timeout_s)
    except MEGLError as e:
        print(f"megl: error: {e}", file=sys.stderr)
        return 127 if isinstance(e, CommandError) else 1


if __name__ == "__main__":
    sys.exit(main())

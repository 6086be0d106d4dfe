"""GPU slots: distinct GPUs per concurrent job, waiting, SIGKILL recovery, timeout. No CUDA needed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megl.errors import MEGLError
from megl.gpu_slots import acquire_gpu, main, n_gpus_from_env, run_with_gpu

SRC = Path(__file__).resolve().parents[1] / "src"

# A job that reports its GPU and its lifetime: "START <gpu> <t>", sleeps, "END <gpu> <t>".
JOB = (
    "import os, sys, time; g = os.environ['CUDA_VISIBLE_DEVICES']; "
    "print('START', g, time.time(), flush=True); time.sleep(float(sys.argv[1])); "
    "print('END', g, time.time(), flush=True)"
)


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    env.pop("MEGL_N_GPUS", None)
    env.update(extra)
    return env


def _gpu_run(lock_dir: Path, n_gpus: int, *cmd: str) -> subprocess.Popen:
    """Start `python -m megl.gpu_slots` (the real CLI, exec path) as a subprocess."""
    return subprocess.Popen(
        [sys.executable, "-m", "megl.gpu_slots", "--n-gpus", str(n_gpus),
         "--lock-dir", str(lock_dir), "--timeout", "20", "--", *cmd],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
    )


def _parse(line: str) -> tuple[str, str, float]:
    tag, gpu, t = line.split()
    return tag, gpu, float(t)


def test_four_jobs_get_distinct_gpus_and_fifth_waits(tmp_path: Path) -> None:
    first = [_gpu_run(tmp_path, 4, sys.executable, "-c", JOB, "1.0") for _ in range(4)]
    starts = [_parse(p.stdout.readline()) for p in first]  # all four running at once
    assert sorted(g for _, g, _ in starts) == ["0", "1", "2", "3"]

    fifth = _gpu_run(tmp_path, 4, sys.executable, "-c", JOB, "0.1")
    out5, err5 = fifth.communicate(timeout=30)
    assert fifth.returncode == 0, err5
    (_, g5, t5_start), (_, _, _) = (_parse(x) for x in out5.splitlines())

    ends = {}
    for p, (_, g, _) in zip(first, starts):
        rest, err = p.communicate(timeout=30)
        assert p.returncode == 0, err
        ends[g] = _parse(rest.strip())[2]
    # The fifth job started only after the holder of its GPU had finished.
    assert g5 in ends
    assert t5_start >= ends[g5]


def test_exec_path_job_pid_holds_lock_and_exit_code_passes_through(tmp_path: Path) -> None:
    p = _gpu_run(tmp_path, 1, sys.executable, "-c",
                 "import os, sys; print(os.getpid(), flush=True); sys.exit(3)")
    out, err = p.communicate(timeout=20)
    assert p.returncode == 3, err
    assert int(out.strip()) == p.pid  # exec'd: no wrapper process between Snakemake and the job
    assert f"pid={p.pid}" in (tmp_path / "gpu0.lock").read_text()


def test_slot_of_sigkilled_holder_is_taken_again(tmp_path: Path) -> None:
    holder = _gpu_run(tmp_path, 1, sys.executable, "-c",
                      "import time; print('ready', flush=True); time.sleep(60)")
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(MEGLError, match="no free GPU"):
            acquire_gpu(1, tmp_path, timeout_s=0.2, poll_s=0.05)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=10)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    t0 = time.monotonic()
    gpu, fd = acquire_gpu(1, tmp_path, timeout_s=5, poll_s=0.05)
    try:
        assert gpu == 0
        assert time.monotonic() - t0 < 1.0
    finally:
        os.close(fd)


def test_timeout_names_lock_dir(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    gpu, fd = acquire_gpu(1, lock_dir, timeout_s=1)
    try:
        t0 = time.monotonic()
        with pytest.raises(MEGLError) as exc:
            acquire_gpu(1, lock_dir, timeout_s=0.3, poll_s=0.05)
        assert time.monotonic() - t0 >= 0.3
        assert str(lock_dir) in str(exc.value)
        assert f"pid={os.getpid()}" in str(exc.value)  # names the holder
    finally:
        os.close(fd)
    gpu2, fd2 = acquire_gpu(1, lock_dir, timeout_s=0.3)  # closing the fd freed the slot
    os.close(fd2)
    assert gpu == gpu2 == 0


def test_subprocess_mode_sets_cuda_visible_devices(tmp_path: Path, capfd) -> None:
    gpu, fd = acquire_gpu(2, tmp_path, timeout_s=1)  # slot 0 busy -> the job gets slot 1
    try:
        rc = run_with_gpu(
            [sys.executable, "-c", "import os; print('CVD=' + os.environ['CUDA_VISIBLE_DEVICES'])"],
            2, tmp_path, timeout_s=1, use_exec=False,
        )
    finally:
        os.close(fd)
    assert (gpu, rc) == (0, 0)
    assert "CVD=1" in capfd.readouterr().out


def test_zero_gpus_leaves_environment_unchanged(tmp_path: Path, capfd, monkeypatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")
    rc = run_with_gpu(
        [sys.executable, "-c", "import os, sys; print('CVD=' + os.environ['CUDA_VISIBLE_DEVICES']); sys.exit(5)"],
        0, tmp_path / "never", use_exec=False,
    )
    assert rc == 5
    assert "CVD=7" in capfd.readouterr().out
    assert not (tmp_path / "never").exists()  # no locking on CPU


def test_n_gpus_from_env(monkeypatch) -> None:
    monkeypatch.delenv("MEGL_N_GPUS", raising=False)
    assert n_gpus_from_env() == 0
    monkeypatch.setenv("MEGL_N_GPUS", "4")
    assert n_gpus_from_env() == 4
    monkeypatch.setenv("MEGL_N_GPUS", "four")
    with pytest.raises(MEGLError, match="MEGL_N_GPUS"):
        n_gpus_from_env()


def test_cli_errors_are_one_line_with_exit_code(tmp_path: Path, capsys) -> None:
    assert main(["--n-gpus", "1", "--lock-dir", str(tmp_path), "--"]) == 1
    assert "no command" in capsys.readouterr().err
    assert main(["--n-gpus", "0", "--", str(tmp_path / "no-such-program")]) == 127
    assert "cannot run" in capsys.readouterr().err

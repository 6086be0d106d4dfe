"""Faults of the world and of the user end in one line and the documented exit code, never in a
traceback or a mixed-up run: run-folder locks, leftovers of killed steps, disk errors, corrupt
archives, train-time data errors (issue #23)."""
from __future__ import annotations

import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import zip_official

from megl.cli import main as cli_main
from megl.errors import MEGLError
from megl.io import atomic_dir, remove_stale_temps, temp_prefix, write_text
from megl.runlock import LOCK_NAME, run_folder_lock, run_folders_lock

REPO = Path(__file__).resolve().parents[1]


def _err_lines(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    # not log lines
    return [line for line in err.strip().splitlines() if line and not re.match(r"\d{4}-\d\d-\d\d ", line)]


def _train_argv(tiny_data, config: dict, tmp_path: Path, run: Path, seed: int = 0, data_root=None) -> list[str]:
    cfg = tmp_path / f"config{seed}.yaml"
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    return ["train", "--config", str(cfg), "--data-root", str(data_root or tiny_data.root), "--split",
            str(tiny_data.split), "--pretrained", str(tiny_data.pretrained), "--dataset", "objects",
            "--backbone", "resnet18", "--method", "baseline", "--seed", str(seed), "--run-dir", str(run)]


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding `folder`'s run lock until killed."""
    code = ("import sys, time\nfrom megl.runlock import run_folder_lock\n"
            "with run_folder_lock(sys.argv[1], 'train'):\n    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.stdout.readline().strip() == "held"
    return proc


# ------------------------------------------------------------------ one writer per run folder
def test_a_second_training_into_a_busy_run_folder_is_refused_and_the_folder_stays_one_run(
        tiny_data, tiny_config, tmp_path, capsys, monkeypatch):
    """Two `megl train` into one folder: the second exits 2 at once naming the holder's PID; the
    folder's config, log, weights and done marker all come from the first."""
    import megl.rundir as rundir_mod

    tiny_config["train"]["epochs"] = 2
    run = tmp_path / "run"
    inside, release = threading.Event(), threading.Event()
    real_save = rundir_mod.save_checkpoint

    def paused_save(run_dir, model, optimizer, epoch, rows):
        real_save(run_dir, model, optimizer, epoch, rows)
        inside.set()
        assert release.wait(120)

    monkeypatch.setattr(rundir_mod, "save_checkpoint", paused_save)
    first_rc: list[int] = []
    argv = _train_argv(tiny_data, tiny_config, tmp_path, run)
    first = threading.Thread(target=lambda: first_rc.append(cli_main(argv)))
    first.start()
    try:
        assert inside.wait(120), "the first training never reached its first checkpoint"
        other = dict(tiny_config, train={**tiny_config["train"], "lr": 0.123})
        assert cli_main(_train_argv(tiny_data, other, tmp_path, run, seed=1)) == 2
        lines = _err_lines(capsys)
        assert len(lines) == 1 and f"PID {os.getpid()}" in lines[0] and str(run) in lines[0], lines
    finally:
        release.set()
        first.join(120)
    assert first_rc == [0]
    done = json.loads((run / "train_done.json").read_text())
    record = json.loads((run / "run.json").read_text())
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert done["run"]["seed"] == record["run"]["seed"] == 0
    assert config["train"]["lr"] == tiny_config["train"]["lr"] != 0.123
    assert len((run / "train_log.csv").read_text().strip().splitlines()) == 1 + done["steps"]
    assert not (run / LOCK_NAME).exists(), "the lock file goes with its holder"


def test_a_lock_held_by_a_killed_process_is_free(tmp_path):
    run = tmp_path / "run"
    holder = _holder(run)
    with pytest.raises(MEGLError, match=rf"PID {holder.pid}"):
        with run_folder_lock(run, "evaluate"):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    assert (run / LOCK_NAME).exists()  # what a kill -9 leaves: a stale file, no lock
    with run_folder_lock(run, "evaluate"):
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (run / LOCK_NAME).exists()


def test_evaluate_into_a_busy_run_folder_is_refused_before_it_reads_anything(tiny_data, tiny_config, tmp_path,
                                                                             capsys):
    run = tmp_path / "run"
    assert cli_main(_train_argv(tiny_data, tiny_config, tmp_path, run)) == 0
    before = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    holder = _holder(run)
    try:
        argv = ["evaluate", str(run), "--config", str(tmp_path / "config0.yaml"), "--data-root", str(tiny_data.root),
                "--split", str(tiny_data.split), "--pretrained", str(tiny_data.pretrained)]
        capsys.readouterr()
        assert cli_main(argv) == 2
        lines = _err_lines(capsys)
        assert len(lines) == 1 and f"PID {holder.pid}" in lines[0] and "megl evaluate" in lines[0], lines
        assert not (run / "metrics.json").exists()
    finally:
        holder.kill()
        holder.wait(30)
    assert cli_main(argv) == 0  # the holder gone (killed), the folder is free
    assert {p.name: p.stat().st_mtime_ns for p in run.iterdir() if p.name in before} == before
    assert (run / "metrics.json").is_file() and not (run / LOCK_NAME).exists()


def test_run_cell_takes_every_seed_folder_or_none(tmp_path):
    root = tmp_path / "cell"
    holder = _holder(root / "seed1")
    try:
        with pytest.raises(MEGLError, match="seed1.*in use"):
            with run_folders_lock([root / "seed0", root / "seed1", root / "seed2"], "run-cell"):
                pass
        assert not (root / "seed0").exists() and not (root / "seed2").exists()  # the ones it made are gone
        rc = subprocess.run([sys.executable, "-m", "megl", "run-cell", "--config", str(REPO / "config" / "smoke.yaml"),
                             "--dataset", "objects", "--backbone", "resnet18", "--method", "baseline", "--seeds", "0",
                             "1", "--runs-root", str(root), "--selection-out", str(tmp_path / "sel.json"),
                             "--data-root", str(tmp_path / "nodata"), "--split", str(tmp_path / "split.json")],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                            cwd=REPO, timeout=120)
        assert rc.returncode == 2 and f"PID {holder.pid}" in rc.stderr and "Traceback" not in rc.stderr, rc.stderr
    finally:
        holder.kill()
        holder.wait(30)


# ------------------------------------------------------------------ no leftovers, one line per fault
def test_a_failed_training_removes_the_folder_it_created(tiny_data, tiny_config, tmp_path, capsys):
    run = tmp_path / "runs" / "seed0"
    argv = _train_argv(tiny_data, tiny_config, tmp_path, run, data_root=tmp_path / "missing")
    assert cli_main(argv) == 2
    assert all("missing" in line for line in _err_lines(capsys))  # one line per missing file
    assert not run.exists()
    run.mkdir(parents=True)  # a folder it did not create stays
    assert cli_main(argv) == 2
    assert run.is_dir() and list(run.iterdir()) == []


def test_a_full_disk_during_training_is_one_line_exit_1(tiny_data, tiny_config, tmp_path, capsys, monkeypatch):
    import megl.rundir as rundir_mod

    def full(path, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(rundir_mod, "write_text", full)
    run = tmp_path / "run"
    assert cli_main(_train_argv(tiny_data, tiny_config, tmp_path, run)) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "No space left on device" in lines[0] and str(run / "config.yaml") in lines[0], lines
    assert not run.exists()


def _copy_dataset(tiny_data, tmp_path: Path) -> tuple[Path, str]:
    data = tmp_path / "data"
    shutil.copytree(tiny_data.root, data)
    split = json.loads(Path(tiny_data.split).read_text())
    ann = json.loads((data / "exp_annotation.json").read_text())
    sid = split["train"][0]
    return data, sid if sid in ann else next(iter(ann))


@pytest.mark.parametrize("fault", ["missing", "text"])
def test_a_train_time_data_error_names_the_file_and_the_sample(tiny_data, tiny_config, tmp_path, capsys, fault):
    data, sid = _copy_dataset(tiny_data, tmp_path)
    ann = json.loads((data / "exp_annotation.json").read_text())
    image = data / "images" / Path(ann[sid]["image_path"]).name
    if fault == "missing":
        image.unlink()
    else:
        image.write_text("not an image, a text file named like one")
    assert cli_main(_train_argv(tiny_data, tiny_config, tmp_path, tmp_path / "run", data_root=data)) == 2
    lines = _err_lines(capsys) or []
    err = [line for line in lines if image.name in line]
    assert len(err) == 1 and f"sample {sid}" in err[0], lines


def test_a_corrupt_zip_member_is_one_line_exit_1(tmp_path, capsys):
    zpath = tmp_path / "ds.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Object_Classification/exp_annotation.json", "{}")
        zf.writestr("Object_Classification/images/a.txt", random.Random(0).randbytes(5000))
    raw = bytearray(zpath.read_bytes())
    at = raw.index(b"images/a.txt") + len("images/a.txt") + 100  # inside the deflated data of the member
    raw[at:at + 16] = b"\xff" * 16
    zpath.write_bytes(bytes(raw))
    assert cli_main(["unpack-data", str(zpath), str(tmp_path / "out")]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and str(zpath) in lines[0] and "a.txt" in lines[0] and "corrupt" in lines[0], lines
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ds.zip"], "no staging folder left behind"
    zpath.write_bytes(bytes(raw[: len(raw) // 3]))  # truncated: no central directory
    assert cli_main(["unpack-data", str(zpath), str(tmp_path / "out")]) == 1
    lines = _err_lines(capsys)
    assert len(lines) == 1 and str(zpath) in lines[0] and "not a readable zip" in lines[0], lines
    assert cli_main(["unpack-data", str(tmp_path / "nope.zip"), str(tmp_path / "out")]) == 2
    assert "no such file" in _err_lines(capsys)[0]


def test_the_next_write_removes_what_a_killed_writer_left(tmp_path):
    """A kill -9 between the temporary file and its rename leaves `.<name>.<host>-<pid>.*.tmp`; the next
    write of that path removes it (its PID is gone), never a live writer's."""
    out = tmp_path / "encoders" / "objects"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = out.parent / temp_prefix(out).replace(f"-{os.getpid()}.", f"-{dead.pid}.")
    (stale.parent / (stale.name + "abcd1234.tmp")).mkdir(parents=True)
    (stale.parent / (stale.name + "abcd1234.tmp") / "half.bin").write_bytes(b"x")
    live = out.parent / (temp_prefix(out) + "live0000.tmp")
    live.mkdir()
    with atomic_dir(out) as tmp:
        (tmp / "tokenizer.json").write_text("{}")
    assert sorted(p.name for p in out.parent.iterdir()) == sorted(["objects", live.name])
    write_text(tmp_path / "x.txt", "y")
    assert remove_stale_temps(out) == []


# ------------------------------------------------------------------ megl compare validates its inputs
HEADER = "dataset,backbone,method,metric,mean,std,n\n"
GOOD = "objects,resnet18,megl,accuracy,0.8,0.01,3\nobjects,resnet18,baseline,accuracy,0.7,,1\n"


def _compare(tmp_path: Path, reference: str | bytes, summary: str = HEADER + GOOD, strict: bool = False):
    ref, new = tmp_path / "ref.csv", tmp_path / "new.csv"
    (ref.write_bytes if isinstance(reference, bytes) else ref.write_text)(reference)
    new.write_text(summary)
    return cli_main(["compare", "--reference", str(ref), "--summary", str(new)] + (["--strict"] if strict else []))


@pytest.mark.parametrize("row, column, what", [
    ("objects,resnet18,megl,accuracy,0.8,0.01,0", "n", "integer >= 1"),       # n=0 was a ZeroDivisionError
    ("objects,resnet18,megl,accuracy,0.8,0.01,", "n", "integer >= 1"),
    ("objects,resnet18,megl,accuracy,0.8,0.01,-3", "n", "integer >= 1"),
    ("objects,resnet18,megl,accuracy,0.8,0.01,2.5", "n", "integer >= 1"),
    ("objects,resnet18,megl,accuracy,high,0.01,3", "mean", "not a number"),
    ("objects,resnet18,megl,accuracy,nan,0.01,3", "mean", "finite"),
    ("objects,resnet18,megl,accuracy,0.8,inf,3", "std", "finite number >= 0"),  # inf agreed with anything
    ("objects,resnet18,megl,accuracy,0.8,-0.1,3", "std", "finite number >= 0"),
    ("objects,,megl,accuracy,0.8,0.01,3", "backbone", "empty"),
])
def test_a_malformed_reference_value_is_one_line_naming_file_row_and_column(tmp_path, capsys, row, column, what):
    assert _compare(tmp_path, HEADER + "objects,vit_b_16,megl,accuracy,0.8,0.01,3\n" + row + "\n") == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1, lines
    assert str(tmp_path / "ref.csv") in lines[0] and "row 3" in lines[0] and f"column {column}:" in lines[0], lines
    assert what in lines[0], lines


def test_a_duplicated_cell_is_refused(tmp_path, capsys):
    assert _compare(tmp_path, HEADER + GOOD + GOOD.splitlines()[0] + "\n") == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and "row 4" in lines[0] and "first in row 2" in lines[0], lines


def test_a_binary_reference_is_one_line(tmp_path, capsys):
    assert _compare(tmp_path, b"\x89PNG\r\n\x1a\n\x00\xff\xfe" + bytes(range(256))) == 2
    lines = _err_lines(capsys)
    assert len(lines) == 1 and str(tmp_path / "ref.csv") in lines[0] and "UTF-8" in lines[0], lines


def test_strict_fails_on_an_empty_reference_or_one_sharing_no_cell(tmp_path, capsys):
    assert _compare(tmp_path, HEADER, strict=True) == 1                       # was exit 0: nothing to disagree
    assert "no cell" in capsys.readouterr().err
    other = HEADER + "actions,resnet18,megl,accuracy,0.8,0.01,3\n"
    assert _compare(tmp_path, other, strict=True) == 1
    assert "shares no cell" in capsys.readouterr().err
    assert _compare(tmp_path, HEADER + GOOD, strict=True) == 0                # the same summary agrees
    assert _compare(tmp_path, HEADER, strict=False) == 0                      # without --strict it only reports


# ------------------------------------------------------------------ one config check, every entry point
def _smoke(**edits) -> dict:
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    for dotted, value in edits.items():
        node = config
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return config


BAD_CONFIGS = {  # name: (config, what the one line says)
    "string_seeds": (_smoke(matrix__seeds=["0", "1"]), "key matrix.seeds.0: '0' is not of type 'integer'"),
    "string_lr": (_smoke(train__lr="0.002"), "key train.lr: '0.002' is not of type 'number'"),
    "split_sum": (_smoke(split__train=0.9), "key split: train + val + test is 1.2; the fractions must sum to 1"),
    "official_without_zip": (_smoke(datasets__objects={"source": "official"}),
                             "key datasets.objects.zip: missing; source: official needs"),
    "unknown_method": (_smoke(matrix__methods=["baseline", "megl_nope"]), "unknown method 'megl_nope'"),
    "undeclared_backbone": (_smoke(matrix__backbones=["resnet18", "resnet50"]),
                            "backbone 'resnet50' has no entry under backbones"),
    "duplicate_seed": (_smoke(matrix__seeds=[0, 0]), "key matrix.seeds: [0, 0] has non-unique elements"),
}


@pytest.fixture(scope="module")
def config_repo(tmp_path_factory) -> Path:
    from megl.bench.workflow import copy_repo

    repo = copy_repo(tmp_path_factory.mktemp("cfg") / "repo")
    for name, (config, _) in BAD_CONFIGS.items():
        (repo / "config" / f"bad_{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return repo


def _config_lines(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(f"config/bad_{name}.yaml: ")]


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_a_bad_config_file_is_refused_alike_by_snakemake_the_cli_and_dvc(config_repo, name):
    """A string where a number belongs stays a string (no coercion of a config FILE's values), and the
    cross-field rules hold: Snakemake (`-n`, before any job), the megl CLI and the DVC pipeline (which
    runs the CLI; `megl dvc-pipeline` validates the file) print the same line and exit 2."""
    from megl.bench.workflow import snakemake_cmd, tool_env

    rel = f"config/bad_{name}.yaml"
    smk = subprocess.run(snakemake_cmd("-n", "--configfile", rel), cwd=config_repo, env=tool_env(),
                         capture_output=True, text=True, timeout=120)
    cli = subprocess.run([sys.executable, "-m", "megl", "dvc-pipeline", "--configfile", rel], cwd=config_repo,
                         env=tool_env(), capture_output=True, text=True, timeout=120)
    for proc in (smk, cli):
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2 and "Traceback" not in out and "Exception" not in out, out[-3000:]
    smk_lines, cli_lines = _config_lines(smk.stdout + smk.stderr, name), _config_lines(cli.stderr, name)
    assert smk_lines and smk_lines == cli_lines, (smk_lines, cli_lines)
    assert any(BAD_CONFIGS[name][1] in line for line in cli_lines), cli_lines
    assert not (config_repo / "pipelines" / f"bad_{name}").exists()


def test_config_overrides_on_the_command_line_are_still_yaml_typed():
    """`--config train={lr: 0.002}` keeps its documented YAML typing (Snakemake hands over strings)."""
    from megl.config import apply_overrides

    config = _smoke()
    apply_overrides(config, {"train": {"lr": "0.002"}, "matrix": {"seeds": ["0", "1"]}})
    assert config["train"]["lr"] == 0.002 and config["matrix"]["seeds"] == [0, 1]


# ------------------------------------------------------------------ official data all the way to the report
def write_official_zip_without_test_maps(repo: Path, zip_rel: str, config: dict) -> list[str]:
    """A small stand-in in the official format, zipped as the authors ship theirs (one top folder), whose
    test split (the one the workflow will cut with `config["split"]`) holds no annotated map. Returns the
    test ids."""
    from megl.data.annotations import read_dataset
    from megl.data.split import split_for
    from megl.data.standin import make_standin

    data = repo / ".official_standin"
    make_standin("objects", data, seed=0, n_images=48, image_size=32, annotated_fraction=0.5)
    s = config["split"]
    test = split_for(read_dataset(data), s["seed"], {k: s[k] for k in ("train", "val", "test")})["test"]
    ann = json.loads((data / "exp_annotation.json").read_text())
    for sid in test:
        if ann[sid]["visual_exp"]:
            (data / ann[sid]["visual_exp"]).unlink()
            ann[sid]["visual_exp"] = ""
    (data / "exp_annotation.json").write_text(json.dumps(ann))
    zip_official(data, repo / zip_rel, "Object_Classification")
    return test


@pytest.mark.slow
def test_official_data_without_test_maps_and_without_megl_reaches_the_report(tmp_path):
    """Official-format data whose test split holds no annotated map, a matrix without full MEGL (res_l
    beside the baseline): snakemake reaches the claims and every figure (n/a where nothing can be drawn),
    under the configured results_dir, exit 0."""
    from megl.bench.workflow import copy_repo, snakemake_cmd, tool_env

    repo = copy_repo(tmp_path / "repo")
    config = _smoke(matrix__backbones=["resnet18"], matrix__methods=["baseline", "res_l"],
                    datasets__objects={"source": "official", "zip": "data/raw/Object_Classification.zip"},
                    results_dir="results/official", split__train=0.5, split__val=0.25, split__test=0.25)
    config["backbones"]["resnet18"].update(weights=None, frozen_stages=0)
    (repo / "config" / "official.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    test_ids = write_official_zip_without_test_maps(repo, "data/raw/Object_Classification.zip", config)
    proc = subprocess.run(snakemake_cmd("--configfile", "config/official.yaml", "--cores", "2"), cwd=repo,
                          env=tool_env(), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    results = repo / "results" / "official"
    split = json.loads((results / "data" / "objects" / "split.json").read_text())
    assert sorted(split["test"]) == sorted(test_ids)
    metrics = json.loads((results / "runs/objects/resnet18/baseline/seed0/metrics.json").read_text())
    assert metrics["miou"] is None  # no test map: nothing to score, and the report goes on
    assert "claim" in (results / "tables" / "claims.md").read_text().lower()
    for stem in ("accuracy", "miou", "ablation", "training", "forest", "qualitative"):
        assert (results / "figures" / f"{stem}.png").stat().st_size > 1000, stem
        assert (results / "figures" / f"{stem}.pdf").stat().st_size > 0, stem
    assert not list((repo / "figures").glob("*.p*")), "figures live under the results_dir"
    # the manuscript's inputs of a results_dir other than the default's: under it (never paper/generated)
    assert (results / "paper" / "generated" / "accuracy.pdf").is_file()
    assert not (repo / "paper" / "generated" / "accuracy.pdf").exists()

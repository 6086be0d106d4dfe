"""The `megl` command line follows conventions: help on every argument, --version, exit 2 for usage
or bad input and 1 for a runtime failure, a one-line message naming a truncated weights file and the
way out, and a preflight that names the install command of a missing tool."""
from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import Killed

import megl
from megl.cli import build_parser
from megl.cli import main as cli_main
from megl.errors import RunFailure
from megl.preflight import INSTALL, preflight

REPO = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for its sub-commands
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_argument_of_every_command_has_help():
    parser = build_parser()
    commands = _subparsers(parser)
    assert {"train", "evaluate", "run-cell", "preflight", "fetch-data", "compare"} <= set(commands)
    missing = []
    for name, sub in [("megl", parser), *commands.items()]:
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, f"arguments without help: {missing}"
    # every sub-command also has its one-line help in `megl --help`
    helps = {a.dest: a.help for a in parser._subparsers._group_actions[0]._choices_actions}
    assert set(helps) == set(commands) and all(helps.values())


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"megl {megl.__version__}"


def test_help_documents_the_exit_codes():
    text = build_parser().format_help()
    assert "exit status:" in text
    for line in ("0  success", "1  runtime failure", "2  usage or bad input"):
        assert line in text, line
    # once, on the top-level help: not repeated under every subcommand's
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    repeated = [name for name, p in sub.choices.items() if "exit status:" in p.format_help()]
    assert not repeated, repeated


def test_usage_and_bad_input_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse: unknown command
        cli_main(["no-such-command"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:  # argparse: missing required argument
        cli_main(["split", str(tmp_path)])
    assert e.value.code == 2
    assert cli_main(["validate-data", str(tmp_path / "absent")]) == 2  # bad input
    capsys.readouterr()


def _fake_tool(bin_dir: Path, name: str) -> None:
    """A `name` on PATH that exists but does not run (exit 1), like a broken install."""
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / name
    tool.write_text("#!/bin/sh\necho broken >&2\nexit 1\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def test_preflight_names_the_install_command(monkeypatch):
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    monkeypatch.setattr("shutil.which", lambda tool: None)
    with pytest.raises(RunFailure) as e:
        preflight(config, pdf=True)
    msg = str(e.value)
    assert INSTALL["java"] in msg and INSTALL["latexmk"] in msg and "megl" in msg
    config["matrix"]["methods"] = ["baseline"]  # writes no text: Java is not needed
    assert preflight(config)["java_needed_by"] == []


def test_preflight_records_latexmk_but_needs_it_only_for_the_pdf(tmp_path, monkeypatch):
    """An installed latexmk is recorded (its version) and a missing one is recorded as None: neither
    fails the check unless the PDF is asked for."""
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["matrix"]["methods"] = ["baseline"]  # writes no text: Java is not needed
    monkeypatch.setenv("PATH", str(tmp_path))  # no latexmk
    assert preflight(config)["latexmk"] is None
    (tmp_path / "latexmk").write_text("#!/bin/sh\necho 'Latexmk, fake'\n")
    (tmp_path / "latexmk").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}/bin{os.pathsep}/usr/bin")
    report = preflight(config)
    assert report["latexmk"] == "Latexmk, fake" and report["latexmk_needed"] is False


def test_preflight_process_fails_within_seconds_with_exit_1(tmp_path):
    """The real `python -m megl preflight` with a Java that does not run: exit 1, one line, fast."""
    _fake_tool(tmp_path / "bin", "java")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": str(REPO / "src")}
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "megl", "preflight", "--config", str(REPO / "config" / "smoke.yaml")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert time.monotonic() - start < 30
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and INSTALL["java"] in lines[0] and "does not run" in lines[0], proc.stderr


# ---------------------------------------------------------------- truncated weights
def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _cli_args(tiny_data, tiny_config, tmp_path) -> list[str]:
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config), encoding="utf-8")
    return ["--config", str(config_path), "--data-root", str(tiny_data.root), "--split", str(tiny_data.split),
            "--pretrained", str(tiny_data.pretrained)]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    err = [line for line in err if "megl " in line or "error" in line.lower()]
    assert len(err) == 1, err
    assert "Traceback" not in err[0] and "SafetensorError" not in err[0].split(":")[0]
    return err[0]


def test_truncated_model_on_evaluate_names_the_file_and_force(tiny_data, tiny_config, tmp_path, capsys):
    run = tmp_path / "run"
    common = _cli_args(tiny_data, tiny_config, tmp_path)
    train = ["train", *common, "--dataset", "objects", "--backbone", "resnet18", "--method", "baseline",
             "--seed", "0", "--run-dir", str(run)]
    assert cli_main(train) == 0
    _truncate(run / "model.safetensors")
    capsys.readouterr()
    assert cli_main(["evaluate", str(run), *common]) == 2
    line = _one_line_error(capsys)
    assert str(run / "model.safetensors") in line and "--force" in line and "truncated" in line
    assert cli_main([*train, "--force"]) == 0  # the way out works
    assert cli_main(["evaluate", str(run), *common]) == 0
    assert (run / "metrics.json").is_file()


def test_truncated_checkpoint_on_resume_names_the_file_and_force(tiny_data, tiny_config, tmp_path, capsys,
                                                                  kill_after_checkpoint):
    tiny_config["train"]["epochs"] = 2
    run = tmp_path / "run"
    common = _cli_args(tiny_data, tiny_config, tmp_path)
    train = ["train", *common, "--dataset", "objects", "--backbone", "resnet18", "--method", "baseline",
             "--seed", "0", "--run-dir", str(run)]
    restore = kill_after_checkpoint()
    with pytest.raises(Killed):
        cli_main(train)
    restore()
    _truncate(run / "checkpoint.safetensors")
    capsys.readouterr()
    assert cli_main([*train, "--resume"]) == 2
    line = _one_line_error(capsys)
    assert str(run / "checkpoint.safetensors") in line and "--force" in line and "truncated" in line
    assert cli_main([*train, "--force"]) == 0  # the way out works
    assert (run / "train_done.json").is_file()


def test_make_standin_and_split_read_their_knobs_from_the_config(tmp_path, capsys):
    """The workflow's form (`--config FILE --dataset NAME`) gives what the flags with the config's values
    give, byte for byte; a mix of the two is refused (which one wins would be a guess)."""
    config = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    config["datasets"]["objects"]["standin"].update(n_images=40, image_size=32, seed=3, class_name_fraction=0.5)
    config["split"].update(seed=2, train=0.6, val=0.2, test=0.2)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(config))
    assert cli_main(["make-standin", "--config", str(cfg), "--dataset", "objects", str(tmp_path / "a")]) == 0
    k, s = config["datasets"]["objects"]["standin"], config["split"]
    assert cli_main(["make-standin", k["kind"], str(tmp_path / "b"), "--seed", "3", "--n-images", "40",
                     "--image-size", "32", "--annotated-fraction", str(k["annotated_fraction"]),
                     "--shortcut-strength", str(k["shortcut_strength"]), "--class-name-fraction", "0.5",
                     "--split-seed", "2",
                     "--train", "0.6", "--val", "0.2", "--test", "0.2"]) == 0
    files_a, files_b = (sorted(p.relative_to(tmp_path / d) for p in (tmp_path / d).rglob("*") if p.is_file())
                        for d in ("a", "b"))
    assert files_a and files_a == files_b
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files_a)
    assert cli_main(["split", str(tmp_path / "a"), "--out", str(tmp_path / "s1.json"), "--config", str(cfg),
                     "--dataset", "objects"]) == 0
    assert cli_main(["split", str(tmp_path / "a"), "--out", str(tmp_path / "s2.json"), "--seed", str(s["seed"]),
                     "--train", "0.6", "--val", "0.2", "--test", "0.2"]) == 0
    assert (tmp_path / "s1.json").read_bytes() == (tmp_path / "s2.json").read_bytes()
    capsys.readouterr()
    assert cli_main(["make-standin", "--config", str(cfg), "--dataset", "objects", str(tmp_path / "c"),
                     "--n-images", "30"]) == 2
    assert "drop --n-images" in capsys.readouterr().err and not (tmp_path / "c").exists()
    assert cli_main(["split", str(tmp_path / "a"), "--out", str(tmp_path / "s3.json"), "--config", str(cfg),
                     "--dataset", "nope"]) == 2
    assert "no dataset 'nope'" in capsys.readouterr().err and not (tmp_path / "s3.json").exists()
    assert cli_main(["make-standin", "objects", str(tmp_path / "d"), "--set", "split.seed=5"]) == 2
    assert "only --dataset reads" in capsys.readouterr().err and not (tmp_path / "d").exists()

"""Training end to end: every method of the registry trains and evaluates on the tiny stand-in;
determinism, resume, refusals, the textual gradient path into the classifier, and the total loss."""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import Killed
from safetensors.torch import load_file

import megl.rundir as rundir_mod
import megl.train as train_mod
from megl.cli import main as cli_main
from megl.data.annotations import read_dataset
from megl.data.dataset import MEDataset, collate, mean_annotation_map
from megl.data.split import read_split
from megl.errors import MEGLError
from megl.evaluate import evaluate_run
from megl.methods import METHODS, MLLM_BACKBONE, get_method
from megl.models.build import build_run_model
from megl.models.gradcam import saliency as saliency_map
from megl.objective import batch_losses
from megl.train import train_run

torch.set_num_threads(1)

CLASSIFIER_METHODS = [m for m, spec in METHODS.items() if spec.kind == "classifier"]
MLLM_METHODS = [m for m, spec in METHODS.items() if spec.kind == "mllm"]
FAST = ["baseline", "megl"]
METRIC_KEYS = ("accuracy", "precision_macro", "recall_macro", "f1_macro", "miou", "saliency_auprc", "miou_all",
               "bleu4", "meteor", "rouge_l", "cider", "spice", "clipscore", "params", "latency_ms", "fps", "n_test")
TEXT_KEYS = ("bleu4", "meteor", "rouge_l", "cider", "clipscore")
TIMING_KEYS = {"latency_ms", "fps", "latency_device"}


def test_registry_matches_the_brief():
    assert set(CLASSIFIER_METHODS) == {"baseline", "megl", "megl_no_consistency", "megl_text_only",
                                       "megl_visual_only", "megl_visual_l1_only", "megl_no_sdtg",
                                       "megl_no_text_supervision", "cdep", "haics", "res_g", "res_l"}
    assert set(MLLM_METHODS) == {"llava_vqa", "finetune_cot"}


# ---------------------------------------------------------------- helpers
def train(tiny_data, config, method, run_dir, *, seed=0, backbone=None, **kw) -> Path:
    backbone = backbone or (MLLM_BACKBONE if METHODS[method].kind == "mllm" else "resnet18")
    return train_run(config, dataset="objects", backbone=backbone, method=method, seed=seed, run_dir=run_dir,
                     data_root=tiny_data.root, split_path=tiny_data.split, pretrained_dir=tiny_data.pretrained,
                     **kw)


def evaluate(tiny_data, config, run_dir) -> dict:
    return evaluate_run(config, run_dir, tiny_data.root, tiny_data.split, tiny_data.pretrained)


def read_log(run_dir: Path) -> tuple[list[str], list[dict]]:
    with open(run_dir / "train_log.csv", encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames), list(reader)


def tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def check_run(tiny_data, config, method: str, run_dir: Path) -> None:
    """Train + evaluate one run and check every file and metric its flags promise."""
    spec = get_method(method)
    train(tiny_data, config, method, run_dir)
    for name in ("model.safetensors", "train_log.csv", "run.json", "train_done.json"):
        assert (run_dir / name).is_file(), name
    assert not (run_dir / "checkpoint.json").exists()  # superseded by the finished run
    assert json.loads((run_dir / "run.json").read_text())["run"]["method"] == method

    fields, rows = read_log(run_dir)
    assert fields == ["epoch", "step", "loss", "loss_pred", "loss_visual", "loss_dc", "loss_textual"]
    assert len(rows) == config["train"]["max_steps_per_epoch"] * config["train"]["epochs"]
    on = {"loss": True,
          "loss_pred": spec.kind == "classifier",
          "loss_visual": spec.visual_loss is not None,
          "loss_dc": spec.consistency,
          "loss_textual": spec.writes_text}
    for row in rows:
        for col, expected in on.items():
            assert (row[col] != "") == expected, (method, col, row)
            if expected:
                assert math.isfinite(float(row[col])), (method, col, row)
    done = json.loads((run_dir / "train_done.json").read_text())
    assert done["steps"] == len(rows) and done["final_loss"] == pytest.approx(float(rows[-1]["loss"]))

    m = evaluate(tiny_data, config, run_dir)
    on_disk = json.loads((run_dir / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(m))
    missing = [k for k in METRIC_KEYS if k not in m]
    assert not missing, missing
    n_test = len(read_split(tiny_data.split)["test"])
    assert m["n_test"] == n_test
    for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        assert 0.0 <= m[k] <= 1.0, k
    assert isinstance(m["params"], int) and m["params"] > 0
    assert m["latency_ms"] > 0 and m["fps"] > 0
    if spec.kind == "classifier":
        for k in ("miou", "saliency_auprc", "miou_all"):
            assert isinstance(m[k], float) and 0.0 <= m[k] <= 1.0, (k, m[k])
    else:
        for k in ("miou", "saliency_auprc", "miou_all"):
            assert m[k] is None, k
    text_on = spec.textual or spec.mllm_target == "answer_rationale"
    for k in TEXT_KEYS:
        if text_on:
            assert isinstance(m[k], float) and math.isfinite(m[k]), (method, k, m[k])
        else:
            assert m[k] is None, (method, k, m[k])  # never 0 for a method that writes no text
            assert m["notes"][k]
    if m["spice"] is None:
        assert "spice" in m["notes"] and m["notes"]["spice"]
    preds = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == n_test
    assert all((p["rationale"] is not None) == text_on for p in preds)
    assert all(isinstance(p["rationale"], str) for p in preds if text_on)


# ---------------------------------------------------------------- end to end
@pytest.mark.parametrize("method", FAST)
def test_train_and_evaluate_fast(tiny_data, tiny_config, tmp_path, method):
    check_run(tiny_data, tiny_config, method, tmp_path / method)


@pytest.mark.parametrize("method", [  # text-writing methods pay ~10 s of Java scorers (METEOR, PTB) each
    pytest.param(m, marks=[pytest.mark.slow] if METHODS[m].writes_text and METHODS[m].mllm_target != "answer" else [])
    for m in [m for m in CLASSIFIER_METHODS if m not in FAST] + MLLM_METHODS])
def test_train_and_evaluate_matrix(tiny_data, tiny_config, tmp_path, method):
    check_run(tiny_data, tiny_config, method, tmp_path / method)


@pytest.mark.parametrize("method", ["baseline", "megl"])
def test_vit_backbone_trains(tiny_data, tiny_config, tmp_path, method):
    train(tiny_data, tiny_config, method, tmp_path / "run", backbone="vit_b_16")
    assert any(k.startswith("classifier.net.encoder") for k in tensors(tmp_path / "run"))
    _, rows = read_log(tmp_path / "run")
    assert all(math.isfinite(float(r["loss"])) for r in rows)


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("method", ["megl_visual_only", pytest.param("megl", marks=pytest.mark.slow)])
def test_same_seed_same_weights_and_metrics(tiny_data, tiny_config, tmp_path, method):
    runs = {name: tmp_path / name for name in ("a", "b", "c")}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(tiny_data, tiny_config, method, runs[name], seed=seed)
    a, b, c = (tensors(runs[n]) for n in "abc")
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())
    assert read_log(runs["a"]) == read_log(runs["b"])
    ma, mb = (evaluate(tiny_data, tiny_config, runs[n]) for n in "ab")
    strip = lambda m: {k: v for k, v in m.items() if k not in TIMING_KEYS}  # noqa: E731
    assert strip(ma) == strip(mb)


# ---------------------------------------------------------------- resume
def test_resume_after_kill_matches_uninterrupted(tiny_data, tiny_config, tmp_path, monkeypatch, kill_after_checkpoint):
    cfg = tiny_config
    cfg["train"]["epochs"] = 2
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    train(tiny_data, cfg, "megl", straight)

    restore = kill_after_checkpoint()
    with pytest.raises(Killed):
        train(tiny_data, cfg, "megl", killed)
    restore()
    assert json.loads((killed / "checkpoint.json").read_text())["epoch"] == 1
    assert not (killed / "train_done.json").exists() and not (killed / "model.safetensors").exists()

    with pytest.raises(MEGLError, match="--resume"):  # unfinished run, no --resume
        train(tiny_data, cfg, "megl", killed)

    calls = {"load": [], "steps": 0}
    real_load, real_losses = rundir_mod.load_checkpoint, train_mod.batch_losses

    def spy_load(*a, **k):
        out = real_load(*a, **k)
        calls["load"].append(out[0])
        return out

    def spy_losses(*a, **k):
        calls["steps"] += 1
        return real_losses(*a, **k)

    monkeypatch.setattr(rundir_mod, "load_checkpoint", spy_load)
    monkeypatch.setattr(train_mod, "batch_losses", spy_losses)
    train(tiny_data, cfg, "megl", killed, resume=True)
    assert calls["load"] == [1]  # resumed from the epoch-1 checkpoint
    assert calls["steps"] == cfg["train"]["max_steps_per_epoch"]  # only epoch 2 was trained again
    s, k = tensors(straight), tensors(killed)
    assert s.keys() == k.keys() and all(torch.equal(s[n], k[n]) for n in s)
    assert (straight / "train_log.csv").read_text() == (killed / "train_log.csv").read_text()
    assert not (killed / "checkpoint.json").exists()


# ---------------------------------------------------------------- refusals
def test_finished_run_refused_without_force(tiny_data, tiny_config, tmp_path):
    run = tmp_path / "run"
    train(tiny_data, tiny_config, "baseline", run)
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(MEGLError, match="--force"):
        train(tiny_data, tiny_config, "baseline", run)
    with pytest.raises(MEGLError, match="--force"):
        train(tiny_data, tiny_config, "baseline", run, resume=True)
    assert (run / "model.safetensors").read_bytes() == before
    train(tiny_data, tiny_config, "baseline", run, seed=1, force=True)
    assert (run / "train_done.json").is_file()
    assert json.loads((run / "train_done.json").read_text())["run"]["seed"] == 1
    assert (run / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize("field,value,valid", [
    ("method", "megl_plus", "megl_no_consistency"),
    ("backbone", "resnet50", "vit_b_16"),
    ("dataset", "birds", "objects"),
])
def test_unknown_names_are_refused(tiny_data, tiny_config, tmp_path, capsys, field, value, valid):
    args = {"dataset": "objects", "backbone": "resnet18", "method": "baseline", field: value}
    with pytest.raises(MEGLError, match=valid) as err:
        train_run(tiny_config, seed=0, run_dir=tmp_path / "r", data_root=tiny_data.root,
                  split_path=tiny_data.split, pretrained_dir=tiny_data.pretrained, **args)
    assert value in str(err.value)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config), encoding="utf-8")
    argv = ["train", "--config", str(config_path), "--seed", "0", "--data-root", str(tiny_data.root),
            "--split", str(tiny_data.split), "--pretrained", str(tiny_data.pretrained),
            "--run-dir", str(tmp_path / "r")] + [x for k, v in args.items() for x in (f"--{k}", v)]
    assert cli_main(argv) == 2
    err_text = capsys.readouterr().err
    assert value in err_text and valid in err_text
    assert not (tmp_path / "r" / "train_done.json").exists()


def test_cli_process_exit_code(tiny_data, tiny_config, tmp_path):
    """The real `python -m megl train` process exits 2 and names the valid methods on stderr."""
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config), encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-m", "megl", "train", "--config", str(config_path), "--dataset", "objects",
         "--backbone", "resnet18", "--method", "nope", "--seed", "0", "--data-root", str(tiny_data.root),
         "--split", str(tiny_data.split), "--run-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert "nope" in proc.stderr and "megl_visual_only" in proc.stderr and "llava_vqa" in proc.stderr


# ---------------------------------------------------------------- losses of one batch
def one_batch(tiny_data, n_annotated=3, n_free=5) -> dict:
    data = read_dataset(tiny_data.root)
    train_ids = read_split(tiny_data.split)["train"]
    ann = [i for i in train_ids if data.by_id(i).visual_exp is not None][:n_annotated]
    free = [i for i in train_ids if data.by_id(i).visual_exp is None][:n_free]
    assert len(ann) == n_annotated and len(free) == n_free
    return collate([MEDataset(data, ann + free, 32)[k] for k in range(n_annotated + n_free)])


def make_model(tiny_data, config, method: str, seed: int = 0):
    torch.manual_seed(seed)
    data = read_dataset(tiny_data.root)
    return build_run_model(config, get_method(method), config["backbones"]["resnet18"], data.num_classes,
                           tiny_data.pretrained)


def textual_only_grads(tiny_data, config, method: str) -> tuple[dict, object]:
    """Run the real batch_losses, capture what it hands SDTG, then backprop L_textual alone with the
    classifier tokens detached: only the saliency path (I ⊙ Â) can reach the classifier."""
    model = make_model(tiny_data, config, method)
    model.train(True)
    batch = one_batch(tiny_data)
    data = read_dataset(tiny_data.root)
    mean_map = mean_annotation_map(data, read_split(tiny_data.split)["train"], 32)
    captured = {}
    real_loss = model.sdtg.loss

    def capture(images, saliency, tokens, rationales):
        captured.update(images=images, saliency=saliency, tokens=tokens, rationales=rationales)
        return real_loss(images, saliency, tokens, rationales)

    model.sdtg.loss = capture
    rationales = [r[0] for r in batch["rationales"]]
    batch_losses(model, batch, config["train"], mean_map, config, rationales)
    del model.sdtg.loss
    assert captured["tokens"] is not None and captured["tokens"].requires_grad
    loss = model.sdtg.loss(captured["images"], captured["saliency"], captured["tokens"].detach(),
                           captured["rationales"])
    net = model.classifier.net
    weights = {"conv1": net.conv1.weight, "layer4": net.layer4[-1].conv2.weight,
               "layer1": net.layer1[0].conv1.weight}
    grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
    return dict(zip(weights, grads)), captured


def test_textual_gradient_reaches_classifier_through_saliency(tiny_data, tiny_config):
    grads, captured = textual_only_grads(tiny_data, tiny_config, "megl")
    assert captured["saliency"] is not None and captured["saliency"].requires_grad
    for name, g in grads.items():
        assert g is not None and g.abs().sum() > 0, name


@pytest.mark.parametrize("method", ["megl_no_text_supervision", "megl_no_sdtg"])
def test_textual_gradient_blocked_in_ablations(tiny_data, tiny_config, method):
    grads, captured = textual_only_grads(tiny_data, tiny_config, method)
    if method == "megl_no_sdtg":
        assert captured["saliency"] is None
        assert make_model(tiny_data, tiny_config, method).sdtg.vision_encoder is None
    else:
        assert captured["saliency"] is not None and not captured["saliency"].requires_grad
    for name, g in grads.items():
        assert g is None or g.abs().sum() == 0, name


@pytest.mark.parametrize("method", ["megl", "megl_no_consistency", "megl_visual_only", "haics", "baseline"])
def test_total_loss_follows_the_formula(tiny_data, tiny_config, method):
    cfg = copy.deepcopy(tiny_config)
    cfg["train"].update(lambda_t=0.3, lambda_v=0.7)  # distinct, so a swapped λ shows
    cfg["baselines"]["haics"]["weight"] = 0.45
    spec = get_method(method)
    model = make_model(tiny_data, cfg, method)
    model.train(True)
    batch = one_batch(tiny_data, n_annotated=3, n_free=5)
    data = read_dataset(tiny_data.root)
    mean_map = mean_annotation_map(data, read_split(tiny_data.split)["train"], 32)
    terms = batch_losses(model, batch, cfg["train"], mean_map, cfg,
                         [r[0] for r in batch["rationales"]])
    share = 3 / 8
    expected = terms["loss_pred"]
    if spec.textual:
        expected = expected + 0.3 * terms["loss_textual"]
    if spec.visual_loss == "l1":
        expected = expected + 0.7 * share * terms["loss_visual"]
    elif spec.visual_loss is not None:
        expected = expected + 0.45 * share * terms["loss_visual"]
    if spec.consistency:
        expected = expected + 0.7 * (1 - share) * terms["loss_dc"]
    assert set(terms) == {"loss", "loss_pred"} | ({"loss_textual"} if spec.textual else set()) | (
        {"loss_visual"} if spec.visual_loss else set()) | ({"loss_dc"} if spec.consistency else set())
    for k, v in terms.items():
        assert torch.isfinite(v) and v.requires_grad, k
        if k != "loss":
            assert v.item() > 0, k  # every switched-on term is live on this mixed batch
    assert float(terms["loss"]) == pytest.approx(float(expected), rel=1e-6, abs=1e-7)
    # L_pred is plain CE on the classifier's logits for the labels
    logits = saliency_map(model.classifier, batch["image"], batch["label"])[0]
    assert float(terms["loss_pred"]) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, batch["label"])), rel=1e-5)


class _Terminal(__import__("io").StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "log"])
def test_fit_draws_a_progress_bar_on_a_terminal_only(tiny_data, tiny_config, tmp_path, monkeypatch, terminal):
    """tqdm over the training steps (disable=None): drawn when stderr is a terminal, absent from a log."""
    import io
    import re

    err = _Terminal() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    train(tiny_data, tiny_config, "baseline", tmp_path / "run")
    bars = re.findall(r"(\d+)/(\d+) \[", err.getvalue())
    if terminal:
        assert bars and "step" in err.getvalue(), err.getvalue()[-2000:]
        done, total = map(int, bars[-1])
        assert done == total > 0  # the bar reached every step of the run
    else:
        assert not bars, err.getvalue()[-2000:]

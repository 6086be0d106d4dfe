"""Each speed cut leaves the numbers bitwise as they were: the optimiser, the per-cell model loading,
the MLLM encoder cache (docs/benchmarks.md)."""
from __future__ import annotations

import copy

import torch

from megl.data.annotations import read_dataset
from megl.data.dataset import MEDataset, collate, mean_annotation_map
from megl.data.split import read_split
from megl.methods import get_method
from megl.models.build import build_run_model
from megl.objective import batch_losses
from megl.train import make_optimizer

torch.set_num_threads(1)


def one_batch(tiny_data, n=8) -> dict:
    data = read_dataset(tiny_data.root)
    ids = read_split(tiny_data.split)["train"][:n]
    return collate([MEDataset(data, ids, 32)[k] for k in range(n)])


def test_foreach_adamw_is_bitwise_the_single_tensor_loop(tiny_data, tiny_config):
    torch.manual_seed(0)
    data = read_dataset(tiny_data.root)
    model = build_run_model(tiny_config, get_method("megl"), tiny_config["backbones"]["resnet18"], data.num_classes,
                            tiny_data.pretrained)
    twin = copy.deepcopy(model)
    before = copy.deepcopy(model.state_to_save())
    mean_map = mean_annotation_map(data, read_split(tiny_data.split)["train"], 32)
    cfg = tiny_config["train"]
    opt = make_optimizer(model, cfg)
    assert opt.defaults["foreach"] is True
    ref = torch.optim.AdamW(twin.trainable_parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                            foreach=False)
    batch = one_batch(tiny_data)
    rationales = [r[0] for r in batch["rationales"]]
    for m, o in ((model, opt), (twin, ref)):
        m.train(True)
        for _ in range(3):
            loss = batch_losses(m, batch, cfg, mean_map, tiny_config, rationales)["loss"]
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()
    a, b = model.state_to_save(), twin.state_to_save()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], before[k]) for k in a)  # the steps did update weights


def _full_state(model) -> dict[str, torch.Tensor]:
    """Every tensor of every part, frozen ones included (CLIP, the LM's base weights)."""
    parts = {**model.modules(), "clip": model.clip}
    return {f"{n}.{k}": v for n, m in parts.items() if m is not None for k, v in m.state_dict().items()}


def test_text_models_load_once_per_process_bitwise(tiny_data, tiny_config, monkeypatch):
    """The second build reads no file, draws the same random numbers and gives bitwise the same
    model as a first build from disk; each build owns its copy."""
    import megl.pretrain as pretrain

    calls = {"clip": 0, "lm": 0}
    real_clip, real_lm = pretrain.load_clip, pretrain.load_pretrained_lm

    def spy_clip(*a, **kw):
        calls["clip"] += 1
        return real_clip(*a, **kw)

    def spy_lm(*a, **kw):
        calls["lm"] += 1
        return real_lm(*a, **kw)

    monkeypatch.setattr(pretrain, "load_clip", spy_clip)
    monkeypatch.setattr(pretrain, "load_pretrained_lm", spy_lm)
    monkeypatch.setattr(pretrain, "_LOADED", {})
    data = read_dataset(tiny_data.root)
    built = []
    for _ in range(2):
        torch.manual_seed(3)
        model = build_run_model(tiny_config, get_method("megl"), tiny_config["backbones"]["resnet18"],
                                data.num_classes, tiny_data.pretrained)
        built.append((model, torch.get_rng_state()))
    assert calls == {"clip": 1, "lm": 1}
    (first, rng1), (second, rng2) = built
    assert torch.equal(rng1, rng2)  # loading from the memo consumed the same random numbers as from disk
    a, b = _full_state(first), _full_state(second)
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # independent copies: training one run cannot touch the next
    with torch.no_grad():
        next(p for p in second.sdtg.parameters()).add_(1.0)
        next(second.clip.parameters()).add_(1.0)
    torch.manual_seed(3)
    third = build_run_model(tiny_config, get_method("megl"), tiny_config["backbones"]["resnet18"],
                            data.num_classes, tiny_data.pretrained)
    c = _full_state(third)
    for k in a:
        assert torch.equal(a[k], c[k]), k
    assert third.sdtg.vision_encoder.vision_model is third.clip.vision_model  # the sharing survives the copy

"""Each speed cut leaves the numbers bitwise as they were: the optimiser, the per-cell model loading,
the MLLM encoder cache (docs/benchmarks.md)."""
from __future__ import annotations

import copy

import torch

from megl.data.annotations import read_dataset
from megl.data.dataset import MEDataset, collate, mean_annotation_map
from megl.data.split import read_split
from megl.methods import get_method
from megl.train import batch_losses, build_run_model, make_optimizer

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
            loss = batch_losses(m, batch, cfg, mean_map, tiny_config["baselines"], rationales)["loss"]
            o.zero_grad(set_to_none=True)
            loss.backward()
            o.step()
    a, b = model.state_to_save(), twin.state_to_save()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert any(not torch.equal(a[k], before[k]) for k in a)  # the steps did update weights

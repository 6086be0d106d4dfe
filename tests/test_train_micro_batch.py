"""`train.micro_batch_size`: gradient accumulation inside the training step (megl.train.backward_step)."""
from __future__ import annotations

import copy

import pytest
import torch

from megl.data.annotations import read_dataset
from megl.data.dataset import MEDataset, collate
from megl.data.split import read_split
from megl.errors import MEGLError
from megl.methods import get_method
from megl.models.build import build_run_model
from megl.train import backward_step


def vit_megl(tiny_data, config):
    """Full MEGL on the tiny ViT (LayerNorm only: no statistic couples the samples of a batch)."""
    torch.manual_seed(0)
    data = read_dataset(tiny_data.root)
    bb = {**config["backbones"]["vit_b_16"], "weights": None, "frozen_stages": 0}
    model = build_run_model(config, get_method("megl"), bb, data.num_classes, tiny_data.pretrained)
    model.train(True)
    return model


def batch_of(tiny_data, n=7):
    data = read_dataset(tiny_data.root)
    ids = read_split(tiny_data.split)["train"]
    ann = [i for i in ids if data.by_id(i).visual_exp is not None][:3]
    free = [i for i in ids if data.by_id(i).visual_exp is None][:n - 3]
    return collate([MEDataset(data, ann + free, 32)[k] for k in range(n)])


def step(model, batch, cfg_train, rationales, config):
    for p in model.trainable_parameters():
        p.grad = None
    mean_map = torch.full((32, 32), 1 / 32 ** 2)
    terms = backward_step(model, batch, cfg_train, mean_map, config, rationales, None, use_bf16=False)
    return {k: float(v.detach()) for k, v in terms.items()}, {i: p.grad.clone() for i, p in
                                                      enumerate(model.trainable_parameters())}


def test_micro_batches_give_the_full_batch_gradients(tiny_data, tiny_config):
    cfg_train = {**tiny_config["train"], "text_batch_size": None, "lambda_t": 1.0, "lambda_v": 1.0}
    batch = batch_of(tiny_data)
    # rationales longer than sdtg.max_rationale_tokens: every text has the same token count (see backward_step)
    rationales = ["the red circle is in the upper left corner of the image " * 4] * len(batch["label"])
    model = vit_megl(tiny_data, tiny_config)
    twin = copy.deepcopy(model)
    full_terms, full = step(model, batch, cfg_train, rationales, tiny_config)
    micro_terms, micro = step(twin, batch, {**cfg_train, "micro_batch_size": 3}, rationales, tiny_config)  # 3, 3, 1
    assert set(micro_terms) == set(full_terms) and full_terms["loss_textual"] > 0
    assert micro_terms["loss"] == pytest.approx(full_terms["loss"], rel=1e-5)
    assert len(full) == len(micro) > 0
    for i in full:
        torch.testing.assert_close(micro[i], full[i], rtol=1e-4, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in full.values())


def test_micro_batch_refuses_a_text_batch(tiny_data, tiny_config):
    cfg_train = {**tiny_config["train"], "text_batch_size": 2, "micro_batch_size": 3}
    batch = batch_of(tiny_data)
    with pytest.raises(MEGLError, match="train.micro_batch_size"):
        step(vit_megl(tiny_data, tiny_config), batch, cfg_train, ["a b c"] * len(batch["label"]), tiny_config)

"""Each speed cut leaves the numbers bitwise as they were: the optimiser, the per-cell model loading,
the MLLM encoder cache (docs/benchmarks.md)."""
from __future__ import annotations

import copy

import pytest
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


# ---------------------------------------------------------------- MLLM: the frozen CLIP(I) once per training image
def _tiny_sdtg(feature_dim=None):
    from tiny_sdtg import CLIP_CFG, LM_CFG, P, S

    from megl.models.clip import FrozenVisionEncoder, build_tiny_clip
    from megl.models.lm import build_tiny_lm
    from megl.models.sdtg import SDTG
    from megl.models.tokenizer import train_tokenizer

    tok = train_tokenizer(["the red circle is round", "the blue square has four corners"] * 3, 300, None)
    torch.manual_seed(0)
    clip = build_tiny_clip(CLIP_CFG, S, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    model = SDTG(build_tiny_lm(LM_CFG, tok), tok, FrozenVisionEncoder(clip), feature_dim, P, "explain.", 8)
    return model, torch.rand(6, 3, S, S, generator=torch.Generator().manual_seed(0))


def _count_encoder_images(monkeypatch) -> list[int]:
    from megl.models.clip import FrozenVisionEncoder

    calls: list[int] = []
    real = FrozenVisionEncoder.forward

    def spy(self, images):
        calls.append(images.shape[0])
        return real(self, images)

    monkeypatch.setattr(FrozenVisionEncoder, "forward", spy)
    return calls


@pytest.mark.parametrize("method,micro", [("llava_vqa", None),
                                          pytest.param("finetune_cot", 6, marks=pytest.mark.slow)])
def test_mllm_image_token_cache_trains_bitwise_as_the_encoder_every_step(tiny_data, tiny_config, tmp_path,
                                                                          monkeypatch, method, micro):
    """A 3-epoch MLLM training with the cache (each training image's CLIP(I) computed once, then
    reused) writes byte-identical weights and loss log to one that runs the encoder every step;
    with micro-batches (two chunk sizes) too."""
    import megl.models.sdtg as sdtg_mod
    from megl.methods import MLLM_BACKBONE
    from megl.train import train_run

    tiny_config["train"].update(epochs=3, max_steps_per_epoch=None, micro_batch_size=micro)
    calls = _count_encoder_images(monkeypatch)
    counts, real_stop = [], sdtg_mod.SDTG.stop_image_token_cache
    monkeypatch.setattr(sdtg_mod.SDTG, "stop_image_token_cache", lambda self: counts.append(real_stop(self)))
    out = {}
    for on in (False, True):
        monkeypatch.setattr(sdtg_mod, "IMAGE_TOKEN_CACHE", on)
        calls.clear()
        run_dir = tmp_path / f"cache_{on}"
        train_run(tiny_config, dataset="objects", backbone=MLLM_BACKBONE, method=method, seed=1, run_dir=run_dir,
                  data_root=tiny_data.root, split_path=tiny_data.split, pretrained_dir=tiny_data.pretrained)
        out[on] = ((run_dir / "model.safetensors").read_bytes(), (run_dir / "train_log.csv").read_text(), sum(calls))
    assert out[True][0] == out[False][0]  # the weights, byte for byte
    assert out[True][1] == out[False][1]  # every step's losses
    off, on = counts
    assert off == {"computed": 0, "reused": 0, "on": False} and on["on"] and on["reused"] > 0
    # every image a step feeds is computed or reused; the encoder also runs one probe batch per chunk size
    assert on["computed"] + on["reused"] == out[False][2]
    assert on["computed"] < out[True][2] <= on["computed"] + 16 and out[True][2] < out[False][2]


def test_image_token_cache_never_serves_the_saliency_path(monkeypatch):
    """MEGL's SDTG encodes I ⊙ Â (saliency changing every step) and the classifier's tokens: the
    encoder runs on every call even with the cache on and image ids given."""
    model, imgs = _tiny_sdtg(feature_dim=8)
    calls = _count_encoder_images(monkeypatch)
    model.start_image_token_cache(6)
    ids = torch.arange(6)
    saliency = torch.rand(6, 4, 4, generator=torch.Generator().manual_seed(1))
    tokens = torch.rand(6, 8, 4, 4)
    texts = ["the red circle"] * 6
    for _ in range(2):
        model.loss(imgs, saliency, None, texts, image_ids=ids)
        model.loss(imgs, saliency, tokens, texts, image_ids=ids)
    assert calls == [6, 6, 6, 6]
    assert model.stop_image_token_cache() == {"computed": 0, "reused": 0, "on": True}


def test_image_token_cache_probe_switches_it_off_where_a_row_depends_on_its_batch(monkeypatch):
    """An encoder whose output for an image depends on the rest of its batch (as some device kernels
    could): the first fully cached batch is computed anyway, differs, and the cache turns itself off;
    every loss equals the encoder-every-step loss."""
    from megl.models.clip import FrozenVisionEncoder

    model, imgs = _tiny_sdtg()
    real = FrozenVisionEncoder.forward
    monkeypatch.setattr(FrozenVisionEncoder, "forward", lambda self, x: real(self, x) + 1e-3 * x.mean())
    texts = ["the red circle"] * 3
    batches = [torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([2, 0, 4]), torch.tensor([1, 3, 5])]
    reference = [model.loss(imgs[b], None, None, texts) for b in batches]
    model.start_image_token_cache(6)
    cached = [model.loss(imgs[b], None, None, texts, image_ids=b) for b in batches]
    assert [torch.equal(a, b) for a, b in zip(cached, reference)] == [True] * 4
    assert model.stop_image_token_cache() == {"computed": 6, "reused": 0, "on": False}
    # the same batches with a batch-invariant encoder: the third and fourth are served from the cache
    monkeypatch.setattr(FrozenVisionEncoder, "forward", real)
    reference = [model.loss(imgs[b], None, None, texts) for b in batches]
    model.start_image_token_cache(6)
    cached = [model.loss(imgs[b], None, None, texts, image_ids=b) for b in batches]
    assert [torch.equal(a, b) for a, b in zip(cached, reference)] == [True] * 4
    assert model.stop_image_token_cache() == {"computed": 6, "reused": 6, "on": True}

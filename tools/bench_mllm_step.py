"""Wall time of one MLLM training step (llava_vqa: V = W_A·CLIP(I), tiny CLIP + tiny Llama of
config.yaml, random weights) with the frozen encoder run every step vs. each training image's
CLIP(I) read from the image-token cache (megl.models.sdtg.SDTG.start_image_token_cache).

    PYTHONPATH=src .venv/bin/python tools/bench_mllm_step.py [--images 256] [--batch 32] [--rounds 15]

Two copies of one model train on the same batches (a seeded permutation of the split per epoch,
as `megl.train.fit` draws them), steps interleaved so load drift hits both alike; the cached copy's
first epoch fills the cache (untimed warm-up). Ends by checking both copies' weights are equal
bitwise. Prints JSON: median ms per step of each, and of the encoder alone on one batch.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="config/config.yaml")
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    from megl.bench.train_step import WORDS, build_sdtg
    from megl.config import load_config
    from megl.methods import get_method
    from megl.objective import batch_losses
    from megl.runs import RunModel
    from megl.train import make_optimizer

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    config = load_config(a.config)
    cfg_train = dict(config["train"], batch_size=a.batch)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(a.images, 3, a.image_size, a.image_size, generator=g)
    labels = torch.randint(0, 10, (a.images,), generator=g)
    texts = [" ".join(WORDS[int(i)] for i in torch.randint(0, len(WORDS), (12,), generator=g)) for _ in range(a.images)]
    names = [f"class_{i}" for i in range(10)]

    class NoFeatures:  # build_sdtg reads the classifier's feature width; the MLLM path has no classifier
        feature_dim = None

    sdtg = build_sdtg(config, NoFeatures(), texts, a.image_size)
    method = get_method("llava_vqa")
    models = {"encoder_every_step": RunModel(method, None, sdtg, None, None, None),
              "image_token_cache": RunModel(method, None, copy.deepcopy(sdtg), None, None, None)}
    opts = {k: make_optimizer(m, cfg_train) for k, m in models.items()}
    models["image_token_cache"].sdtg.start_image_token_cache(a.images)

    def step(name: str, index: torch.Tensor) -> None:
        model, opt = models[name], opts[name]
        batch = {"image": images[index], "label": labels[index], "index": index}
        opt.zero_grad(set_to_none=True)
        texts_of_batch = [texts[i] for i in index.tolist()]
        batch_losses(model, batch, cfg_train, None, config, texts_of_batch, names)["loss"].backward()
        opt.step()

    per_epoch = a.images // a.batch
    times: dict[str, list[float]] = {k: [] for k in models}
    batches = []
    for epoch in range(1 + -(-a.rounds // per_epoch)):
        order = torch.randperm(a.images, generator=torch.Generator().manual_seed(1_000_003 + epoch))
        batches += [(epoch, order[s * a.batch:(s + 1) * a.batch]) for s in range(per_epoch)]
    for model in models.values():
        model.train(True)
    for epoch, index in batches:
        for name in models:
            t0 = time.perf_counter()
            step(name, index)
            if epoch > 0 and len(times[name]) < a.rounds:
                times[name].append((time.perf_counter() - t0) * 1000)
    a_state, b_state = (m.sdtg.trainable_state_dict() for m in models.values())
    identical = all(torch.equal(a_state[k], b_state[k]) for k in a_state)
    counts = models["image_token_cache"].sdtg.stop_image_token_cache()
    enc = sdtg.vision_encoder
    enc_ms = []
    with torch.no_grad():
        for _ in range(a.rounds):
            t0 = time.perf_counter()
            enc(images[:a.batch])
            enc_ms.append((time.perf_counter() - t0) * 1000)
    ms = {k: round(statistics.median(v), 2) for k, v in times.items()}
    print(json.dumps({"ms_per_step": ms, "encoder_ms_per_batch": round(statistics.median(enc_ms), 2),
                      "saved_ms": round(ms["encoder_every_step"] - ms["image_token_cache"], 2),
                      "weights_bitwise_equal": identical, "cache": counts, "images": a.images, "batch": a.batch,
                      "image_size": a.image_size, "threads": a.threads, "rounds": a.rounds,
                      "ms_all": {k: [round(x, 1) for x in v] for k, v in times.items()}}, indent=1))


if __name__ == "__main__":
    main()

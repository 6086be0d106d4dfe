import time

import pytest
import torch
from torch import nn

from megl.errors import MEGLError
from megl.timing import count_parameters, latency_of_classifier, measure_latency

torch.set_num_threads(1)


def test_count_parameters():
    lin = nn.Linear(3, 4)  # 3*4 weights + 4 biases
    assert count_parameters(lin) == 16
    lin.weight.requires_grad_(False)
    assert count_parameters(lin) == 16
    assert count_parameters(lin, trainable_only=True) == 4
    shared = nn.Sequential(lin, lin)  # the same tensors counted once
    assert count_parameters(shared) == 16


def test_measure_latency_counts_and_units():
    calls = []

    def fn():
        calls.append(1)
        time.sleep(0.002)

    r = measure_latency(fn, warmup=2, repeats=5, device="cpu")
    assert len(calls) == 7
    assert r["repeats"] == 5
    assert r["latency_ms"] >= 2.0
    assert r["fps"] == pytest.approx(1000.0 / r["latency_ms"])
    assert r["latency_ms_min"] <= r["latency_ms"] <= r["latency_ms_max"]


def test_measure_latency_bad_args():
    with pytest.raises(MEGLError, match="repeats"):
        measure_latency(lambda: None, warmup=0, repeats=0, device="cpu")


def _tiny_model():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def test_latency_of_classifier_cpu_restores_mode_and_skips_bf16():
    seen = {}
    model = _tiny_model()
    model.register_forward_hook(lambda m, i, o: seen.update(shape=tuple(i[0].shape), grad=torch.is_grad_enabled(),
                                                            training=m.training))
    model.train()
    r = latency_of_classifier(model, image_size=(16, 12), device="cpu", warmup=1, repeats=3, bf16=True)
    assert seen == {"shape": (1, 3, 16, 12), "grad": False, "training": False}
    assert model.training
    assert r["latency_ms"] > 0 and r["fps"] == pytest.approx(1000.0 / r["latency_ms"])
    assert r["bf16_used"] is False and r["batch_size"] == 1 and r["image_size"] == [16, 12]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_latency_of_classifier_cuda_bf16():
    dtypes = []
    model = _tiny_model().cuda()
    model[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    r = latency_of_classifier(model, image_size=32, device="cuda", warmup=2, repeats=5, bf16=True)
    assert r["bf16_used"] is True and dtypes[-1] == torch.bfloat16
    assert r["latency_ms"] > 0


def test_device_mismatch_raises():
    with pytest.raises(MEGLError, match="model is on cpu"):
        latency_of_classifier(_tiny_model(), 8, "cuda", 0, 1, False)

"""Does an environment change the floating-point order of training? (docs/experiment.md §6)

Trains the narrow ResNet for 20 AdamW steps on fixed random data and prints a hash of its weights, the
seconds and the last loss. Run it under two environments and compare the hashes, e.g.

    python tools/float_order_probe.py
    ONEDNN_MAX_CPU_ISA=AVX python tools/float_order_probe.py     # oneDNN without AVX2/FMA: another hash
"""
import hashlib
import time

import torch
import torch.nn.functional as F

from megl.models.backbones import build_classifier

torch.manual_seed(0)
torch.set_num_threads(1)
model = build_classifier({"family": "resnet18", "widths": [8, 16, 32, 64], "image_size": 64, "weights": None,
                          "frozen_stages": 0}, 10)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
images, labels = torch.rand(32, 3, 64, 64), torch.randint(0, 10, (32,))
started = time.time()
for _ in range(20):
    loss = F.cross_entropy(model.forward_with_features(images).logits, labels)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest()[:12]
print(f"weights {digest}  {time.time() - started:.2f} s  loss {loss.item():.6f}")

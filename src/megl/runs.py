"""One run's model (RunModel), its weights on disk, and the environment recorded beside it.

The run's folder name comes from megl.matrix.Run.path."""
from __future__ import annotations

import json
import platform
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from megl.errors import MEGLError
from megl.io import atomic_path
from megl.methods import Method

WEIGHTS = "model.safetensors"


@dataclass
class RunModel:
    """Everything a run trains or evaluates; `trainable` holds the parts whose weights we save."""

    method: Method
    classifier: nn.Module | None
    sdtg: nn.Module | None
    explanation_state: nn.Module | None   # a baseline's learnable part (RES-L's imputation)
    clip: nn.Module | None                # full CLIP model, for CLIPScore (frozen)
    clip_tokenizer: object | None

    def modules(self) -> dict[str, nn.Module]:
        parts = {"classifier": self.classifier, "sdtg": self.sdtg, "explanation_state": self.explanation_state}
        return {k: v for k, v in parts.items() if v is not None}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self.modules().values() for p in m.parameters() if p.requires_grad]

    def train(self, mode: bool = True) -> None:
        """Train/eval mode of every part; the frozen vision encoder keeps itself in eval mode."""
        for module in self.modules().values():
            module.train(mode)

    def to(self, device: torch.device) -> "RunModel":
        for module in self.modules().values():
            module.to(device)
        if self.clip is not None:
            self.clip.to(device)
        return self

    def state_to_save(self) -> dict[str, torch.Tensor]:
        """Classifier and baseline state whole; of SDTG only what trains (projections, LoRA)."""
        state = {}
        for name, module in self.modules().items():
            trainable = {n for n, p in module.named_parameters() if p.requires_grad}
            for key, tensor in module.state_dict().items():
                if name != "sdtg" or key in trainable:
                    state[f"{name}.{key}"] = tensor.detach().contiguous().cpu()
        return state

    def load_saved_state(self, state: dict[str, torch.Tensor], source: str) -> None:
        for name, module in self.modules().items():
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            result = module.load_state_dict(part, strict=(name != "sdtg"))
            if name == "sdtg" and result.unexpected_keys:
                raise MEGLError(f"{source}: unexpected SDTG weights {result.unexpected_keys[:3]}")
            if name == "sdtg":
                missing_trainable = {n for n, p in module.named_parameters() if p.requires_grad} - set(part)
                if missing_trainable:
                    raise MEGLError(f"{source}: SDTG weights missing {sorted(missing_trainable)[:3]}")


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    with atomic_path(path, suffix=".safetensors") as tmp:
        save_file(state, str(tmp))


def load_weights(path: Path, way_out: str = "retrain the run with `megl train ... --force`") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing, truncated or corrupt file is one MEGLError line
    naming the file and `way_out` (never a raw SafetensorError traceback)."""
    if not path.exists():
        raise MEGLError(f"{path}: no weights; train the run first")
    from safetensors import SafetensorError

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise MEGLError(f"{path}: unreadable weights, truncated or corrupt ({exc}); {way_out}") from None


def environment_info() -> dict:
    """Versions and git revision recorded beside each run."""
    packages = {}
    for name in ("torch", "torchvision", "transformers", "peft", "numpy", "pycocoevalcap", "snakemake", "dvc"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": packages,
            "git_revision": rev, "cuda": torch.cuda.is_available()}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MEGLError(f"{path}: cannot read: {exc}") from exc


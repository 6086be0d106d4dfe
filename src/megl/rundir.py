"""Writing one run's folder: the run record, the step log, epoch checkpoints (resume) and the final
weights with the marker that says the run is finished. Reading run folders: megl.runs."""
from __future__ import annotations

import csv
import io
import pickle
from pathlib import Path

import torch

from megl.errors import MEGLError
from megl.io import atomic_path, write_json, write_text
from megl.methods import Method
from megl.runs import WEIGHTS, RunModel, environment_info, load_weights, read_json, save_weights

LOG_FIELDS = ["epoch", "step", "loss", "loss_pred", "loss_visual", "loss_dc", "loss_textual"]
DONE = "train_done.json"
CKPT_META, CKPT_WEIGHTS, CKPT_OPTIM = "checkpoint.json", "checkpoint.safetensors", "checkpoint_optim.pt"


def write_run_record(run_dir: Path, config: dict, identity: dict, method: Method, data_root, split_path,
                     pretrained_dir, backbone_weights, device) -> None:
    """run.json (identity, method flags, inputs, environment) and the config snapshot the run used."""
    import yaml

    write_json(run_dir / "run.json", {"run": identity, "method": method.run_record(), "data_root": str(data_root),
                                      "split": str(split_path),
                                      "pretrained": str(pretrained_dir) if pretrained_dir else None,
                                      "backbone_weights": str(backbone_weights) if backbone_weights else None,
                                      "environment": environment_info(), "device": str(device)})
    write_text(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))


def finish_run(run_dir: Path, model: RunModel, identity: dict, cfg_train: dict, rows: list[dict],
               seconds: float) -> None:
    """Final weights, the step log, then the marker that says the run is finished."""
    save_weights(model.state_to_save(), run_dir / WEIGHTS)
    write_text(run_dir / "train_log.csv", log_csv(rows))
    write_json(run_dir / DONE, {"run": identity, "epochs": cfg_train["epochs"], "steps": len(rows),
                                "final_loss": float(rows[-1]["loss"]) if rows else None,
                                "train_seconds_this_process": round(seconds, 2)})


def check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    if (run_dir / DONE).exists() and not force:
        raise MEGLError(f"{run_dir}: run already finished; pass --force to train it again")
    if force:
        for name in (DONE, WEIGHTS, CKPT_META, CKPT_WEIGHTS, CKPT_OPTIM, "train_log.csv"):
            (run_dir / name).unlink(missing_ok=True)
    elif (run_dir / CKPT_META).exists() and not resume:
        raise MEGLError(f"{run_dir}: holds an unfinished run; pass --resume to continue it or --force to restart")


def log_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=LOG_FIELDS, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def save_checkpoint(run_dir: Path, model: RunModel, optimizer, epoch: int, log_rows: list[dict]) -> None:
    """Weights, optimiser and RNG state, then the log, then the meta file that commits them."""
    save_weights(model.state_to_save(), run_dir / CKPT_WEIGHTS)
    with atomic_path(run_dir / CKPT_OPTIM, suffix=".pt") as tmp:
        torch.save({"optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state()}, tmp)
    write_text(run_dir / "train_log.csv", log_csv(log_rows))
    write_json(run_dir / CKPT_META, {"epoch": epoch, "steps": len(log_rows)})


def load_checkpoint(run_dir: Path, model: RunModel, optimizer) -> tuple[int, list[dict]]:
    way_out = "the checkpoint cannot be resumed; pass --force instead of --resume to retrain the run from scratch"
    meta = read_json(run_dir / CKPT_META)
    model.load_saved_state(load_weights(run_dir / CKPT_WEIGHTS, way_out), str(run_dir / CKPT_WEIGHTS))
    try:
        extra = torch.load(run_dir / CKPT_OPTIM, weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:
        raise MEGLError(f"{run_dir / CKPT_OPTIM}: unreadable optimiser state, truncated or corrupt "
                        f"({type(exc).__name__}); {way_out}") from None
    optimizer.load_state_dict(extra["optimizer"])
    torch.set_rng_state(extra["torch_rng"])
    with open(run_dir / "train_log.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))[: meta["steps"]]
    return int(meta["epoch"]), rows


def drop_checkpoints(run_dir: Path) -> None:
    """The finished run supersedes its checkpoints."""
    for name in (CKPT_WEIGHTS, CKPT_OPTIM, CKPT_META):
        (run_dir / name).unlink(missing_ok=True)

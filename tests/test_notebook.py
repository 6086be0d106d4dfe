"""The review notebook executes headless on a synthetic results tree."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from megl.report.collect import REQUIRED_KEYS

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "review.ipynb"


def _write_runs(root: Path) -> None:
    for backbone in ("resnet18", "vit_b_16"):
        for k, method in enumerate(("baseline", "megl")):
            for seed in (0, 1, 2):
                run = root / "runs" / "objects" / backbone / method / f"seed{seed}"
                run.mkdir(parents=True)
                rec = {key: 0.5 for key in REQUIRED_KEYS}
                rec.update(accuracy=0.6 + 0.1 * k + 0.01 * seed, n_test=100,
                           run={"dataset": "objects", "backbone": backbone, "method": method, "seed": seed})
                (run / "metrics.json").write_text(json.dumps(rec))


@pytest.mark.slow
def test_review_notebook_runs(tmp_path, monkeypatch):
    _write_runs(tmp_path)
    monkeypatch.setenv("MEGL_RESULTS", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = json.dumps([o.get("data", {}).get("text/plain", "") for o in outputs])
    assert "12 runs" in json.dumps([o.get("text", "") for o in outputs])
    assert "holds" in text                         # megl beats baseline by 0.1 on every seed

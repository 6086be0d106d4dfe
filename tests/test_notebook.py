"""The review notebook executes headless on a synthetic results tree: two methods seed by seed, the
claims with their CIs, one run's qualitative examples."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from megl.report.collect import required_keys

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "review.ipynb"


def _write_runs(root: Path) -> None:
    for backbone in ("resnet18", "vit_b_16"):
        for k, method in enumerate(("baseline", "megl")):
            for seed in (0, 1, 2):
                run = root / "runs" / "objects" / backbone / method / f"seed{seed}"
                run.mkdir(parents=True)
                rec = {key: 0.5 for key in required_keys()}
                rec.update(accuracy=0.6 + 0.1 * k + (0.01 + 0.002 * k) * seed, n_test=100,
                           run={"dataset": "objects", "backbone": backbone, "method": method, "seed": seed})
                (run / "metrics.json").write_text(json.dumps(rec))
                ids = np.array(["s1", "s2"])
                np.savez(run / "saliency.npz", ids=ids, images=np.random.rand(2, 3, 8, 8).astype("float32"),
                         gt=np.random.rand(2, 8, 8), saliency=np.random.rand(2, 8, 8))
                (run / "predictions.jsonl").write_text("".join(
                    json.dumps({"id": i, "label": 0, "prediction": 1, "rationale": "a red ball", "reference": ["x"]})
                    + "\n" for i in ids))


def _execute(monkeypatch, results: str, config: str) -> nbformat.NotebookNode:
    """The notebook run as JupyterLab runs it: the kernel started in notebooks/."""
    monkeypatch.setenv("MEGL_RESULTS", results)
    monkeypatch.setenv("MEGL_CONFIG", config)
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend: figures become outputs
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    return nb


@pytest.mark.slow
def test_review_notebook_runs(tmp_path, monkeypatch):
    _write_runs(tmp_path)
    # a relative MEGL_CONFIG, as `make lab MEGL_CONFIG=...` passes it: read from the repository root
    nb = _execute(monkeypatch, str(tmp_path), "config/smoke.yaml")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = json.dumps([o.get("data", {}).get("text/plain", "") for o in outputs])
    printed = json.dumps([o.get("text", "") for o in outputs])
    assert "12 runs" in printed and f"labels from {NOTEBOOK.parents[1] / 'config' / 'smoke.yaml'}" in printed
    # numbers rounded for display: A - B is 0.1000 (not 0.100000 nor float noise in exponent form)
    assert "0.1000" in text and "0.100000" not in text and not re.search(r"\de-\d\d", text), text[:3000]
    assert "holds" in text                         # megl beats baseline by .100, .102, .104 (an identical gain on
                                                   # 3 seeds would be not shown: sign-flip p = 1/8)
    assert "objects (stand-in)" in text and "ResNet18-narrow" in text  # honest labels from the config
    assert "ci_low" in text and "C1" in text       # the claims with their CIs
    assert "a red ball" in text                    # one run's qualitative examples (rationales)
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 3                        # seed-by-seed plot, claim CIs, qualitative grid


@pytest.mark.slow
def test_review_notebook_stops_on_a_missing_config(tmp_path, monkeypatch):
    """A MEGL_CONFIG that does not exist (from the repository root) is an error, not "no config"."""
    _write_runs(tmp_path)
    with pytest.raises(CellExecutionError) as e:
        _execute(monkeypatch, str(tmp_path), "config/no_such.yaml")
    assert "MEGL_CONFIG=config/no_such.yaml" in str(e.value) and "does not exist" in str(e.value)


def test_make_lab_roots_jupyterlab_at_the_repository_and_opens_the_notebook():
    """`make lab`'s command line, parsed by jupyter_server itself: the root is the repository (so
    results/ can be browsed) and the notebook opened is notebooks/review.ipynb below it."""
    import shlex
    import subprocess

    from jupyter_server.serverapp import ServerApp

    repo = NOTEBOOK.parents[1]
    # --no-print-directory: under `make test` (MAKELEVEL set) make would add "Leaving directory" lines
    line = subprocess.run(["make", "--no-print-directory", "-n", "lab", "STAMP="], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip().splitlines()[-1]
    argv = shlex.split(line)
    assert argv[:2] == [".venv/bin/jupyter", "lab"], argv
    app = ServerApp()
    app.parse_command_line(argv[2:])
    assert Path(app.root_dir) == repo
    assert app._resolve_file_to_run_and_root_dir() == "notebooks/review.ipynb"

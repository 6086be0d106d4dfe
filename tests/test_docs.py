"""Doc drift: what the documents say about the code, checked against the code. Config keys are
checked by tests/test_config.py (config/README.md against the schema and the shipped configs); here:
DVC stage and Snakemake rule names, the default matrix's counts, the verdict words and the seed
minimum of the claims, the interpreter of the README's DVC commands, and what --configfile and a bare
`1e-4` do."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from megl.bench.workflow import copy_repo, tool_env
from megl.config import load_config
from megl.matrix import enumerate_runs, matrix_datasets, matrix_methods, matrix_mllm_methods
from megl.methods import METHODS
from megl.report.claims import MIN_PAIRED_SEEDS, VERDICTS

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", REPO / "config" / "README.md", *sorted((REPO / "docs").glob("*.md")),
        REPO / "paper" / "README.md"]
PAPER = REPO / "paper" / "main.tex"
NUMBER_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5}


def text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def backticked(path: Path) -> list[str]:
    return re.findall(r"`([^`\n]+)`", text(path))


# ------------------------------------------------------------------ stage and rule names
@pytest.fixture(scope="module")
def dvc_stages() -> set[str]:
    """`dvc stage list` of the repository's dvc.yaml (read only), and the stages a derived pipeline adds."""
    proc = subprocess.run([str(Path(sys.executable).parent / "dvc"), "stage", "list", "--name-only"], cwd=REPO,
                          env=tool_env(), capture_output=True, text=True, check=True)
    return set(proc.stdout.split())


def test_documented_dvc_stage_names_exist(dvc_stages):
    """Every `stage@item` a document names is a stage of dvc.yaml (placeholders: the stage exists)."""
    bases = {s.split("@")[0] for s in dvc_stages} | {"unpack_data"}  # unpack_data: megl dvc-pipeline's
    wrong = []
    for doc in DOCS:
        for span in backticked(doc):
            for base, item in re.findall(r"(?<![\w.])([a-z_]+)@([\w<>…-]+)", span):
                placeholder = bool(re.search(r"[<>…]", item))
                unknown = not placeholder and base != "unpack_data" and f"{base}@{item}" not in dvc_stages
                if base not in bases or unknown:
                    wrong.append(f"{doc.relative_to(REPO)}: {base}@{item}")
    assert not wrong, wrong


def test_documented_snakemake_rules_exist():
    rules = {m for smk in (REPO / "workflow" / "rules").glob("*.smk")
             for m in re.findall(r"^rule (\w+):", text(smk), flags=re.M)}
    rules |= set(re.findall(r"^rule (\w+):", text(REPO / "Snakefile"), flags=re.M))
    wrong = [f"{doc.relative_to(REPO)}: rule {name}" for doc in DOCS
             for name in re.findall(r"`rule (\w+)`|rule `(\w+)`", text(doc)) for name in name if name
             if name not in rules]
    assert not wrong, wrong


def test_readme_dvc_commands_run_the_venv_and_no_bare_python():
    """The README's DVC commands call the venv's dvc/megl by path, and no stage runs a bare `python`."""
    readme = text(REPO / "README.md")
    block = readme[readme.index("- **DVC**"):readme.index("## Data")]
    commands = [line.strip() for line in block.splitlines() if re.match(r"\s*\.venv/bin/(dvc|megl) ", line)]
    assert len(commands) >= 8, block
    spec = yaml.safe_load(text(REPO / "dvc.yaml"))
    for stage in spec["stages"].values():
        assert not re.search(r"(^|\s)python3? -m", (stage.get("do") or stage)["cmd"])


# ------------------------------------------------------------------ counts of the default matrix
def test_config_readme_counts_are_the_default_matrix():
    config = load_config(REPO / "config" / "config.yaml")
    row = next(line for line in text(REPO / "config" / "README.md").splitlines()
               if line.startswith("| `config/config.yaml` |"))

    def count(pattern: str) -> int:
        m = re.search(pattern, row)
        assert m, f"config/README.md's config.yaml row no longer says {pattern!r}: {row}"
        return int(m.group(1))

    runs = enumerate_runs(config)
    assert count(r"(\d+) classifier methods") == len(matrix_methods(config["matrix"]))
    assert count(r"(\d+) MLLM baselines \(") == len(matrix_mllm_methods(config["matrix"]))
    assert count(r"registers, (\d+)\)") == len(METHODS)
    assert count(r"(\d+) datasets") == len(matrix_datasets(config["matrix"]))
    assert count(r"(\d+) matrix blocks") == len(config["matrix"]["blocks"])
    assert count(r"(\d+) seeds") == len(config["matrix"]["seeds"])
    assert count(r"(\d+) backbones") == len({r.backbone for r in runs if r.backbone != "mllm"})
    assert count(r"(\d+) cells") == len({(r.dataset, r.backbone, r.method) for r in runs})
    assert count(r"(\d+) runs") == len(runs)


def test_no_document_gives_another_method_count():
    """`N methods` / `N classifier methods` anywhere in the documents is the default's or the registry's."""
    config = load_config(REPO / "config" / "config.yaml")
    allowed = {len(matrix_methods(config["matrix"])), len(METHODS),
               len(matrix_methods(config["matrix"])) + len(matrix_mllm_methods(config["matrix"]))}
    wrong = [f"{doc.relative_to(REPO)}: {m.group(0)}" for doc in DOCS
             for m in re.finditer(r"\b(\d+) (?:classifier )?methods\b(?! (?:of|in|on|per)\b)", text(doc))
             if int(m.group(1)) > 2 and int(m.group(1)) not in allowed]
    assert not wrong, wrong


# ------------------------------------------------------------------ verdicts
VERDICT_LIKE = ("holds", "not shown", "untestable", "undecided", "inconclusive", "supported",
                "not supported", "refuted", "rejected")


def emphasised(doc: str) -> list[str]:
    return re.findall(r"\*\*([a-z ]+)\*\*|(?<![*\w])\*([a-z ]+)\*(?![*\w])|\\emph\{([a-z ]+)\}", doc)


def test_documented_verdict_words_are_the_ones_claims_writes():
    found = {}
    for doc in [*DOCS, PAPER]:
        for groups in emphasised(text(doc)):
            word = next(g for g in groups if g)
            if word in VERDICT_LIKE:
                found.setdefault(word, []).append(doc.relative_to(REPO).as_posix())
    assert set(found) <= set(VERDICTS), {w: f for w, f in found.items() if w not in VERDICTS}
    for doc in (REPO / "docs" / "report.md", PAPER):  # the two places that define them name all three
        words = {next(g for g in groups if g) for groups in emphasised(text(doc))}
        assert set(VERDICTS) <= words, (doc, words)


def test_documented_seed_minimum_is_the_code_s():
    wrong = []
    for doc in [*DOCS, PAPER]:
        for m in re.finditer(r"fewer\s+than\s+(\w+)\s+(?:paired\s+)?seeds", text(doc)):
            n = NUMBER_WORDS.get(m.group(1), int(m.group(1)) if m.group(1).isdigit() else None)
            if n != MIN_PAIRED_SEEDS:
                wrong.append(f"{doc.relative_to(REPO)}: {m.group(0)}")
    assert not wrong, wrong


# ------------------------------------------------------------------ what config/README.md says configs do
def test_a_bare_1e_4_fails_in_a_file_and_is_read_on_the_command_line(tmp_path):
    """config/README.md: in a config file a bare `1e-4` fails naming the key; `--set` reads it as a number."""
    from megl.errors import MEGLError

    doc = text(REPO / "config" / "README.md")
    assert "`--set train.lr=1e-4` is read as" in doc and "a bare `1e-4` is a YAML 1.1" in doc
    bad = tmp_path / "bad.yaml"
    config = yaml.safe_load(text(REPO / "config" / "smoke.yaml"))
    config["train"]["lr"] = "@LR@"
    bad.write_text(yaml.safe_dump(config, sort_keys=False).replace("'@LR@'", "1e-4"))  # a bare 1e-4
    assert "  lr: 1e-4\n" in bad.read_text()
    with pytest.raises(MEGLError, match="train.lr: '1e-4' is not of type 'number'"):
        load_config(bad)
    proc = subprocess.run([sys.executable, "-m", "megl", "plan", "--config", "config/smoke.yaml", "--set",
                           "train.lr=1e-4"], cwd=REPO, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_a_configfile_replaces_the_default_config(tmp_path):
    """config/README.md: `--configfile X` replaces config/config.yaml, not merged into it. Snakemake's
    resolved config for --configfile config/smoke.yaml is smoke.yaml's, without config.yaml's keys."""
    doc = text(REPO / "config" / "README.md")
    assert "it **replaces**\n  `config/config.yaml`" in doc
    repo = copy_repo(tmp_path / "repo")
    smoke = load_config(repo / "config" / "smoke.yaml")
    results = smoke.get("results_dir", "results")
    proc = subprocess.run([sys.executable, "-m", "snakemake", "--configfile", "config/smoke.yaml", "--cores", "1",
                           f"{results}/preflight.json"], cwd=repo, env=tool_env(), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resolved = yaml.safe_load((repo / results / "config.resolved.yaml").read_text())
    default = yaml.safe_load(text(REPO / "config" / "config.yaml"))
    assert resolved["matrix"] == smoke["matrix"]
    assert resolved["train"] == smoke["train"] != default["train"]
    only_default = set(default["datasets"]) - set(smoke["datasets"])
    assert only_default and not only_default & set(resolved["datasets"])  # nothing merged in

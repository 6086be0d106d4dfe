"""Text metrics: the COCO caption scorers (pycocoevalcap: BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE) and CLIPScore.

The scorers are called as published, after pycocoevalcap's PTBTokenizer (Java); nothing is re-implemented.
METEOR is pycocoevalcap's Meteor process and line protocol; only the feeding differs (`_meteor_many`).
Both JVMs, METEOR's and the tokenizer's, are shared by the jobs of a machine (megl.metrics.meteor_server)
when they can be; a job that cannot reach them starts its own.
A scorer that cannot run returns None with the reason in `notes`, never 0.
"""

from __future__ import annotations

import contextlib
import functools
import io
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path

import numpy as np

from megl.errors import MEGLError, RunFailure
from megl.metrics import meteor_server

TEXT_KEYS = ("bleu4", "meteor", "rouge_l", "cider", "spice")
JAVA_MISSING = "Java not found: install openjdk (apt-get install default-jre-headless) for the COCO caption scorers"
# What pycocoevalcap's spice/get_stanford_models.py would download on first use.
SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


class JavaMissingError(RunFailure):
    """The COCO caption scorers need a Java runtime and none is on PATH."""

    def __init__(self) -> None:
        super().__init__(JAVA_MISSING)


def _require_java() -> str:
    java = shutil.which("java")
    if java is None:
        raise JavaMissingError()
    return java


def spice_unavailable_reason() -> str | None:
    """Why SPICE cannot run offline here (missing CoreNLP jars), or None if its files are present."""
    try:
        import pycocoevalcap.spice as spice_pkg
    except ImportError as e:  # pragma: no cover - pycocoevalcap is a hard dependency
        return f"pycocoevalcap.spice not importable: {e}"
    d = Path(spice_pkg.__file__).parent
    missing = [str(d / "lib" / j) for j in SPICE_CORENLP_JARS if not (d / "lib" / j).exists()]
    if not (d / "spice-1.0.jar").exists():
        missing.insert(0, str(d / "spice-1.0.jar"))
    if missing:
        return (
            "SPICE not computed: Stanford CoreNLP 3.6.0 is not installed (missing "
            + ", ".join(missing)
            + "); pycocoevalcap would download it on first use and this run is offline"
        )
    return None


def null_text_metrics(reason: str) -> dict:
    """Every text metric None (a method that writes no text), with the reason; never 0."""
    out = {k: None for k in TEXT_KEYS}
    out["clipscore"] = None
    out["n"] = 0
    out["notes"] = {k: reason for k in (*TEXT_KEYS, "clipscore")}
    return out


def _validate(references: Mapping, hypotheses: Mapping) -> None:
    missing_h = [k for k in references if k not in hypotheses]
    missing_r = [k for k in hypotheses if k not in references]
    if missing_h:
        raise MEGLError(f"text metrics: sample {missing_h[0]!r} has references but no hypothesis")
    if missing_r:
        raise MEGLError(f"text metrics: sample {missing_r[0]!r} has a hypothesis but no references")
    for k, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence) or len(refs) == 0:
            raise MEGLError(f"text metrics: sample {k!r} field 'references' must be a non-empty list of strings")
        if not all(isinstance(r, str) for r in refs):
            raise MEGLError(f"text metrics: sample {k!r} field 'references' holds a non-string")
        if not isinstance(hypotheses[k], str):
            raise MEGLError(f"text metrics: sample {k!r} field 'hypothesis' must be a string, "
                            f"got {type(hypotheses[k]).__name__}")


def _tokenize(captions: dict, server=None) -> dict:
    """pycocoevalcap's PTBTokenizer().tokenize(captions): by the shared server's tokenizer JVM on the
    connection `server` when it answers, else by a JVM of this job's own (the same tokens)."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    out = meteor_server.tokenize(server, captions) if server is not None else None
    if out is None:
        with contextlib.redirect_stdout(io.StringIO()):
            out = PTBTokenizer().tokenize(captions)
    for k, v in captions.items():  # the tokenizer maps output lines by position: check nothing shifted
        if len(out.get(k, [])) != len(v):
            raise MEGLError(f"text metrics: PTBTokenizer lost captions of sample {k!r}")
    return out


@contextlib.contextmanager
def _meteor_scorer():
    """One METEOR JVM, kept alive for every run scored inside the block (a JVM start costs seconds)."""
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()
    try:
        yield scorer
    finally:
        if scorer.lock.locked():  # else Meteor.__del__ would block forever on the lock
            scorer.lock.release()
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()


def _meteor_score_line(hypothesis: str, references: list[str]) -> str:
    """The SCORE request of one sample, exactly as pycocoevalcap's Meteor._stat writes it."""
    hypothesis = hypothesis.replace("|||", "").replace("  ", " ")
    return " ||| ".join(("SCORE", " ||| ".join(references), hypothesis))


def _meteor_many(scorer, gts: dict, runs: list[dict]) -> list[float]:
    """Corpus METEOR of each run (tokenized {id: [hypothesis]}) against the tokenized references `gts`.

    The protocol of pycocoevalcap's Meteor.compute_score: a SCORE line per sample returns that
    sample's statistics, then one EVAL line of a run's statistics (in `gts` order) returns its
    per-sample scores and the corpus score. Two differences, neither changing a score: each
    distinct SCORE line is asked once (the statistics depend on that line alone; a cell's seeds
    write many identical rationales), and the SCORE lines are streamed by a writer thread while
    this one reads the answers, instead of one pipe round trip per sample.
    """
    requests: list[list[str]] = []
    for res in runs:
        if res.keys() != gts.keys():
            raise MEGLError("METEOR: hypotheses and references cover different samples")
        if any(len(res[i]) != 1 for i in gts):
            raise MEGLError("METEOR: exactly one hypothesis per sample")
        requests.append([_meteor_score_line(res[i][0], gts[i]) for i in gts])
    stats = dict.fromkeys(line for lines in requests for line in lines)
    unique = list(stats)
    proc = scorer.meteor_p

    def write() -> None:
        try:
            for line in unique:
                proc.stdin.write(f"{line}\n".encode())
            proc.stdin.flush()
        except OSError:  # the JVM died: the reader below sees end of file
            pass

    try:
        with scorer.lock:
            writer = threading.Thread(target=write, name="meteor-writer", daemon=True)
            writer.start()
            for line in unique:
                answer = proc.stdout.readline()
                if not answer:
                    raise OSError("the METEOR process closed its output")
                stats[line] = answer.decode().strip()
            writer.join()
            scores = []
            for lines in requests:
                proc.stdin.write(("EVAL" + "".join(f" ||| {stats[line]}" for line in lines) + "\n").encode())
                proc.stdin.flush()
                for _ in lines:  # per-sample scores: read to keep the protocol in step, not used
                    float(proc.stdout.readline().strip())
                scores.append(float(proc.stdout.readline().strip()))
    except (ValueError, OSError) as e:  # the JVM died or answered nothing
        raise MEGLError(f"METEOR scorer failed: {type(e).__name__}: {e}") from None
    return scores


def _spice(gts: dict, res: dict) -> tuple[float | None, str | None]:
    from pycocoevalcap.spice.spice import Spice

    reason = spice_unavailable_reason()  # checked first: Spice() itself would start a download
    if reason is not None:
        return None, reason
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            score, _ = Spice().compute_score(gts, res)
    except (subprocess.CalledProcessError, OSError, ValueError) as e:
        return None, f"SPICE failed to run: {type(e).__name__}: {e}"
    score = float(score)
    if not np.isfinite(score):
        return None, "SPICE returned NaN"
    return score, None


def text_metrics(references: Mapping, hypotheses: Mapping[object, str], spice: bool = True) -> dict:
    """BLEU-4, METEOR, ROUGE-L, CIDEr and SPICE of hypotheses against references (per sample id).

    Corpus-level scores as reported by pycocoevalcap (CIDEr's idf comes from this reference set,
    so score the whole test set at once). Returns the scores, `n`, and `notes` for scorers that
    did not run (None, never 0).
    """
    return text_metrics_many(references, {None: hypotheses}, spice)[None]


def text_metrics_many(references: Mapping, hypotheses_by_run: Mapping[object, Mapping[object, str]],
                      spice: bool = True) -> dict:
    """`text_metrics` for several runs scored against the same references, paying the JVMs once:
    one PTBTokenizer call for the references and one for every run's hypotheses, one METEOR
    process for all runs (both in the machine's shared server when it answers). Each run's scores
    equal what `text_metrics` gives it alone."""
    _require_java()
    for hyps in hypotheses_by_run.values():
        _validate(references, hyps)
    if len(references) == 0:
        empty = {**{k: None for k in TEXT_KEYS}, "n": 0, "notes": {k: "no samples to score" for k in TEXT_KEYS}}
        return {run: dict(empty) for run in hypotheses_by_run}
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    runs = list(hypotheses_by_run)
    results = {}
    # the shared server (started if need be) tokenizes with its PTBTokenizer JVM, then scores METEOR
    server = meteor_server.connect()
    gts = _tokenize({k: [{"caption": r} for r in refs] for k, refs in references.items()}, server)
    keyed = {(i, k): [{"caption": hypotheses_by_run[run][k]}] for i, run in enumerate(runs) for k in references}
    tokenized = _tokenize(keyed, server)
    res_by_run = [{k: tokenized[(i, k)] for k in references} for i in range(len(runs))]
    meteor_scores = meteor_server.score(server, gts, res_by_run) if server is not None else None
    if meteor_scores is None:  # no server to be had: this job's own JVM, as before
        with _meteor_scorer() as meteor:
            meteor_scores = _meteor_many(meteor, gts, res_by_run)
    for run, res, meteor_score in zip(runs, res_by_run, meteor_scores):
        out: dict = {"n": len(res), "notes": {}}
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out["bleu4"] = float(bleu[3])
        out["meteor"] = meteor_score
        out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
        out["cider"] = float(Cider().compute_score(gts, res)[0])
        if spice:
            out["spice"], note = _spice(gts, res)
            if note:
                out["notes"]["spice"] = note
        else:
            out["spice"] = None
            out["notes"]["spice"] = "SPICE disabled by the caller (spice=False)"
        results[run] = {k: out[k] for k in (*TEXT_KEYS, "n", "notes")}
    return results


@functools.lru_cache(maxsize=1)
def scorer_versions() -> dict:
    """Versions of the scoring stack: pycocoevalcap, the Java runtime, and whether SPICE can run."""
    try:
        pce = metadata.version("pycocoevalcap")
    except metadata.PackageNotFoundError:
        pce = None
    java = shutil.which("java")
    java_version = None
    if java is not None:
        try:
            p = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
            lines = (p.stderr or p.stdout).strip().splitlines()
            java_version = lines[0] if lines else None
        except (OSError, subprocess.SubprocessError):
            java_version = None
    return {"pycocoevalcap": pce, "java": java_version, "spice_available": spice_unavailable_reason() is None}


def clipscore(similarities: Sequence[float] | np.ndarray) -> float | None:
    """CLIPScore (Hessel et al. 2021): mean over samples of 2.5 * max(cos, 0); None for no samples."""
    c = np.asarray(similarities, dtype=np.float64).ravel()
    if c.size == 0:
        return None
    if not np.all(np.isfinite(c)):
        raise MEGLError("clipscore: cosine similarities contain NaN or inf")
    if np.any(np.abs(c) > 1.0 + 1e-4):
        raise MEGLError(f"clipscore: cosine similarities must lie in [-1, 1], got [{c.min():.4g}, {c.max():.4g}]")
    return float(np.mean(2.5 * np.maximum(c, 0.0)))

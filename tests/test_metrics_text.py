import subprocess
import sys
import threading

import numpy as np
import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from megl.errors import MEGLError
from megl.metrics import text
from megl.metrics.text import (
    JAVA_MISSING,
    TEXT_KEYS,
    JavaMissingError,
    clipscore,
    null_text_metrics,
    scorer_versions,
    text_metrics,
    text_metrics_many,
)

REFS = {
    "s1": ["The bird has a red crown and black wings.", "A small bird with a red head and dark wings."],
    "s2": ["Fluffy clouds over a green hill.", "A green hill under white clouds.", "Clouds above the hills."],
    "s3": ["The tumour is visible in the left lobe.", "A bright mass appears in the left lobe."],
    7: ["A dog runs across the grass.", "The dog is running on a lawn."],
}
HYPS = {
    "s1": "A bird with a red crown and black wings.",
    "s2": "White clouds over green hills.",
    "s3": "There is a bright mass in the left lobe.",
    7: "A cat sleeps on a sofa.",
}


@pytest.fixture(scope="module")
def ours():
    return text_metrics(REFS, HYPS)


@pytest.fixture(scope="module")
def reference_scores():
    """The published scorers called directly, as in pycocoevalcap's COCOEvalCap."""
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": HYPS[k]}] for k in REFS})
    meteor = Meteor()
    try:
        m = meteor.compute_score(gts, res)[0]
    finally:
        del meteor
    return {
        "bleu4": Bleu(4).compute_score(gts, res, verbose=0)[0][3],
        "meteor": m,
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": Cider().compute_score(gts, res)[0],
    }


@pytest.mark.slow
def test_matches_pycocoevalcap_scorers(ours, reference_scores):
    for k, v in reference_scores.items():
        assert ours[k] == pytest.approx(v, abs=1e-9), k
    assert ours["n"] == 4
    assert 0 < ours["bleu4"] < 1 and 0 < ours["meteor"] < 1 and 0 < ours["rouge_l"] < 1 and ours["cider"] > 0


@pytest.mark.slow
def test_spice_is_none_with_reason_offline(ours):
    if text.spice_unavailable_reason() is None:
        pytest.skip("SPICE's CoreNLP jars are installed here")
    assert ours["spice"] is None
    assert "stanford-corenlp-3.6.0" in ours["notes"]["spice"]


@pytest.mark.slow
def test_sanity_identical_and_unrelated():
    refs = {i: [r[0]] for i, r in enumerate(REFS.values())}
    same = text_metrics(refs, {i: r[0] for i, r in refs.items()}, spice=False)
    assert same["bleu4"] == pytest.approx(1.0, abs=1e-6)
    assert same["rouge_l"] == 1.0
    assert same["meteor"] > 0.95
    assert same["notes"]["spice"].startswith("SPICE disabled")
    other = {0: "quantum chromodynamics lattice gauge", 1: "stock market futures trading volume",
             2: "medieval castle drawbridge moat", 3: "violin concerto allegro movement"}
    low = text_metrics(refs, other, spice=False)
    assert low["bleu4"] < 1e-3 and low["rouge_l"] == 0.0 and low["cider"] < 0.05 and low["meteor"] < 0.05


def test_java_missing_raises_one_line(monkeypatch):
    monkeypatch.setattr(text.shutil, "which", lambda name: None)
    with pytest.raises(JavaMissingError) as e:
        text_metrics(REFS, HYPS)
    assert isinstance(e.value, MEGLError)
    assert str(e.value) == JAVA_MISSING and "\n" not in str(e.value)


def test_spice_never_downloads_when_jars_missing(monkeypatch):
    def boom():
        raise AssertionError("get_stanford_models must not be called")

    import pycocoevalcap.spice.spice as spice_mod

    monkeypatch.setattr(spice_mod, "get_stanford_models", boom)
    monkeypatch.setattr(text, "spice_unavailable_reason", lambda: "SPICE not computed: jars missing")
    score, note = text._spice({1: ["a b"]}, {1: ["a b"]})
    assert score is None and note == "SPICE not computed: jars missing"


def test_spice_present_runs_and_failure_is_none(monkeypatch):
    import pycocoevalcap.spice.spice as spice_mod

    class FakeSpice:
        def compute_score(self, gts, res):
            return 0.25, []

    class BrokenSpice:
        def compute_score(self, gts, res):
            raise subprocess.CalledProcessError(1, ["java"])

    monkeypatch.setattr(text, "spice_unavailable_reason", lambda: None)
    monkeypatch.setattr(spice_mod, "Spice", FakeSpice)
    assert text._spice({1: ["a"]}, {1: ["a"]}) == (0.25, None)
    monkeypatch.setattr(spice_mod, "Spice", BrokenSpice)
    score, note = text._spice({1: ["a"]}, {1: ["a"]})
    assert score is None and note.startswith("SPICE failed to run: CalledProcessError")


def test_spice_reason_names_missing_jars():
    reason = text.spice_unavailable_reason()
    if reason is not None:
        assert "stanford-corenlp-3.6.0" in reason and "offline" in reason


def test_no_text_is_none_not_zero():
    m = null_text_metrics("method writes no text")
    for k in (*TEXT_KEYS, "clipscore"):
        assert m[k] is None
        assert m["notes"][k] == "method writes no text"
    empty = text_metrics({}, {})
    assert all(empty[k] is None for k in TEXT_KEYS) and empty["n"] == 0


@pytest.mark.parametrize(
    "refs,hyps,match",
    [
        ({1: ["a"]}, {}, "sample 1 has references but no hypothesis"),
        ({1: ["a"]}, {1: "a", 2: "b"}, "sample 2 has a hypothesis but no references"),
        ({1: []}, {1: "a"}, "sample 1 field 'references'"),
        ({1: "a"}, {1: "a"}, "sample 1 field 'references'"),
        ({1: ["a"]}, {1: None}, "sample 1 field 'hypothesis'"),
    ],
)
def test_bad_input_raises(refs, hyps, match):
    with pytest.raises(MEGLError, match=match):
        text_metrics(refs, hyps)


def test_clipscore():
    # 2.5 * max(cos, 0): (2.5*0.3 + 2.5*0.2 + 0) / 3
    assert clipscore(np.array([0.3, 0.2, -0.1])) == pytest.approx(1.25 / 3)
    assert clipscore([]) is None
    with pytest.raises(MEGLError, match=r"\[-1, 1\]"):
        clipscore([1.5])
    with pytest.raises(MEGLError, match="NaN"):
        clipscore([float("nan")])


def test_scorer_versions():
    v = scorer_versions()
    assert v["pycocoevalcap"]
    assert v["java"] and "version" in v["java"]
    assert isinstance(v["spice_available"], bool)


# A stand-in for the METEOR jar's -stdio protocol: a SCORE line answers with how many SCORE lines it
# has read so far (so a repeated request would show), an EVAL line with each statistic, then their sum.
FAKE_METEOR = """
import sys
n = 0
for line in sys.stdin:
    if line.startswith("SCORE"):
        n += 1
        print(n, flush=True)
    elif line.startswith("EVAL"):
        stats = [float(x) for x in line.rstrip("\\n").split(" ||| ")[1:]]
        for x in stats:
            print(x)
        print(sum(stats), flush=True)
"""


class _FakeMeteor:
    def __init__(self):
        self.meteor_p = subprocess.Popen([sys.executable, "-c", FAKE_METEOR], stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE)
        self.lock = threading.Lock()


def test_meteor_asks_each_distinct_line_once_in_order_and_streams_large_requests():
    # long references: the requests (~3 MB) overflow the pipes unless written while answers are read
    gts = {i: [f"reference {i} " + "word " * 300, "another reference"] for i in range(2000)}
    runs = [{i: [f"hypothesis {i % 7}"] for i in gts},
            {i: [f"hypothesis {i % 7}"] for i in gts},                       # the same as run 0
            {i: [f"hypothesis {i % 7}" if i % 2 else "a ||| b  c"] for i in gts}]
    fake = _FakeMeteor()
    try:
        scores = text._meteor_many(fake, gts, runs)
    finally:
        fake.meteor_p.stdin.close()
        fake.meteor_p.wait()
    order: dict[str, int] = {}  # the statistic of a line = its rank among the distinct lines, first seen first
    for res in runs:
        for i in gts:
            order.setdefault(text._meteor_score_line(res[i][0], gts[i]), len(order) + 1)
    expected = [float(sum(order[text._meteor_score_line(res[i][0], gts[i])] for i in gts)) for res in runs]
    assert len(order) == 3000  # 2000 distinct lines of run 0 (= run 1), 1000 new ones of run 2
    assert scores == expected
    assert text._meteor_score_line("a ||| b  c", ["r"]) == "SCORE ||| r ||| a b c"  # as Meteor._stat cleans it


def test_meteor_process_that_dies_is_one_error():
    fake = _FakeMeteor()
    fake.meteor_p.kill()
    fake.meteor_p.wait()
    with pytest.raises(MEGLError, match="METEOR scorer failed"):
        text._meteor_many(fake, {1: ["a b"]}, [{1: ["a"]}])


@pytest.mark.slow
def test_many_runs_equal_the_published_meteor_and_single_run_scores():
    """text_metrics_many with repeated hypotheses across runs (as a cell's seeds write them): each
    run's METEOR equals pycocoevalcap's Meteor.compute_score, the other scores text_metrics alone."""
    other = {**HYPS, "s2": "Clouds over a hill.", 7: "A dog ||| runs  on grass."}
    runs = {0: HYPS, 1: other, 2: dict(HYPS)}
    many = text_metrics_many(REFS, runs, spice=False)
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    meteor = Meteor()
    try:
        for run, hyps in runs.items():
            res = tok.tokenize({k: [{"caption": hyps[k]}] for k in REFS})
            assert many[run]["meteor"] == meteor.compute_score(gts, res)[0], run
            alone = text_metrics(REFS, hyps, spice=False)
            for k in ("bleu4", "rouge_l", "cider"):
                assert many[run][k] == pytest.approx(alone[k], abs=1e-12), (run, k)
    finally:
        del meteor
    assert many[0] == many[2] and many[0]["meteor"] != many[1]["meteor"]

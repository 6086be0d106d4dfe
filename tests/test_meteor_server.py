"""The shared METEOR server (megl.metrics.meteor_server): bitwise the scores of a job's own JVM,
started once under a lock, a text scoring that starts no METEOR JVM of its own, the fallback, the idle exit;
its tokenizer JVM: pycocoevalcap's PTBTokenizer tokens exactly, and no tokenizer JVM in the job.
(PTB tokenisation is stubbed where it is not what is tested: each Java start costs seconds.)"""
from __future__ import annotations

import contextlib
import subprocess
import sys
import time

import pytest
from pycocoevalcap.meteor.meteor import Meteor

from megl.metrics import meteor_server, text
from megl.metrics.text import text_metrics_many

REFS = {
    "s1": ["The bird has a red crown and black wings.", "A small bird with a red head and dark wings."],
    "s2": ["Fluffy clouds over a green hill.", "A green hill under white clouds.", "Clouds above the hills."],
    7: ["A dog runs across the grass.", "The dog is running on a lawn."],
}
RUNS = {0: {"s1": "A bird with a red crown and black wings.", "s2": "White clouds over green hills.",
            7: "A cat sleeps on a sofa."},
        1: {"s1": "A red bird.", "s2": "Clouds ||| over a  hill.", 7: "A dog runs on grass."},
        2: {"s1": "A red bird.", "s2": "White clouds over green hills.", 7: "A dog runs on grass."}}


def fake_tokenize(captions: dict, server=None) -> dict:
    """Lower-case, drop the full stop: what PTBTokenizer does to these captions, without a JVM."""
    return {k: [c["caption"].lower().replace(".", "").strip() for c in v] for k, v in captions.items()}


def tokenized():
    gts = fake_tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    runs = [fake_tokenize({k: [{"caption": hyps[k]}] for k in REFS}) for hyps in RUNS.values()]
    return gts, runs


@pytest.fixture
def server_sock(tmp_path, monkeypatch):
    """A private server socket for this test; the server exits 30 s after its last request."""
    path = tmp_path / "srv" / "meteor.sock"
    monkeypatch.setattr(meteor_server, "default_socket", lambda: path)
    monkeypatch.setattr(meteor_server, "IDLE_S", 30.0)
    monkeypatch.delenv(meteor_server.DISABLE_ENV, raising=False)
    return path


@pytest.fixture
def sock(server_sock, monkeypatch):
    """`server_sock`, with PTB tokenisation stubbed (where METEOR is what is tested)."""
    monkeypatch.setattr(text, "_tokenize", fake_tokenize)
    return server_sock


# Captions for the tokenizer: punctuation PTB splits or drops, quotes (whose direction PTB infers from
# context), brackets, unicode, a newline inside a caption, empty-ish captions, long and repeated ones.
CAPTIONS = {
    "s1": [{"caption": 'The bird has a "red" crown, and black wings.'},
           {"caption": "A small bird (with a red head) and dark wings!"}],
    "s2": [{"caption": "Fluffy clouds -- over a green hill... Isn't it?"},
           {"caption": ""}, {"caption": "   "}, {"caption": "..."}],
    7: [{"caption": "Café crème, naïve façade: 北京 — “curly quotes” and ‘single’ ones; émoji 🐦."}],
    ("run", 3): [{"caption": "Line one\nline two {braces} [brackets] $5.00 & 50% e.g. U.S.A. can't won't"}],
    "s4": [{"caption": "\"Quoted at the start\" and 'single' quotes ''doubled'' ``latex``."}],
    "s5": [{"caption": "A " + "very long caption, " * 60 + "end."}, {"caption": "It's the bird's nest."}],
    "s6": [{"caption": "Ends with an open quote \""}, {"caption": "Next caption after the open quote"}],
}


def published_tokens(captions: dict) -> dict:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    return PTBTokenizer().tokenize(captions)  # as published: its own JVM


def test_server_tokens_equal_pycocoevalcap_ptbtokenizer(server_sock):
    expected = published_tokens(CAPTIONS)
    reordered = dict(reversed(list(CAPTIONS.items())))
    conn = meteor_server.connect()
    assert conn is not None
    try:
        first = meteor_server.tokenize(conn, CAPTIONS)
        again = meteor_server.tokenize(conn, reordered)  # the same connection: no state carried over
        single = meteor_server.tokenize(conn, {"s6": CAPTIONS["s6"]})
    finally:
        conn.close()
    assert first == expected
    assert list(first) == list(expected)
    assert again == published_tokens(reordered)
    assert single == published_tokens({"s6": CAPTIONS["s6"]})
    assert expected[7][0] != "" and expected["s2"][1] == ""  # the unicode survived, the empty caption stayed empty
    # a second connection (the next job) is served by the same tokenizer JVM
    conn = meteor_server.connect()
    try:
        assert meteor_server.tokenize(conn, CAPTIONS) == expected
    finally:
        conn.close()


def test_text_scoring_starts_no_tokenizer_jvm_and_scores_bitwise_as_own_jvms(server_sock, monkeypatch):
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    refs = {k: [c["caption"] for c in v if c["caption"].strip(" .")] for k, v in CAPTIONS.items()}
    runs = {seed: {k: v[0] + (" and more" if seed else "") for k, v in refs.items()} for seed in (0, 1)}
    monkeypatch.setenv(meteor_server.DISABLE_ENV, "0")
    own = text_metrics_many(refs, runs, spice=False)  # every JVM the job's own, as before the server
    monkeypatch.delenv(meteor_server.DISABLE_ENV)

    class NoJVM:
        PIPE = subprocess.PIPE

        @staticmethod
        def Popen(*a, **kw):
            pytest.fail(f"the job started its own tokenizer JVM: {a}")

    shared = text_metrics_many(refs, runs, spice=False)  # starts the server (its JVMs warm up)
    monkeypatch.setattr(ptb, "subprocess", NoJVM)
    monkeypatch.setattr(text, "_meteor_scorer", lambda: pytest.fail("a job started its own METEOR JVM"))
    warm = text_metrics_many(refs, runs, spice=False)
    assert shared == own and warm == own  # every metric, exact floats
    assert own[0]["bleu4"] != own[1]["bleu4"]


def test_tokenizer_failure_falls_back_to_own_jvm(server_sock, monkeypatch):
    """A request the server cannot tokenize gets an error answer (the connection stays usable);
    a tokenizer JVM asked to serve another command than pycocoevalcap's refuses; a job whose
    request is not answered tokenizes with its own JVM: the same tokens."""
    conn = meteor_server.connect()
    try:
        assert "error" in meteor_server._ask(conn, {"op": "tokenize", "captions": [[1]]})  # not a string
        assert meteor_server.tokenize(conn, {0: [{"caption": 5}]}) is None
        assert meteor_server.tokenize(conn, {0: [{"caption": "Still, served."}]}) == {0: ["still served"]}
    finally:
        conn.close()
    monkeypatch.setattr(meteor_server._TokenizerJVM, "COMMAND", ("java", "something", "else"))
    with pytest.raises(ValueError, match="not the command"):
        meteor_server._TokenizerJVM().tokenize([["A caption."]])
    asked = []
    monkeypatch.setattr(meteor_server, "tokenize", lambda conn, captions: asked.append(captions))  # answers None
    captions = {"a": [{"caption": "The bird, red."}]}
    assert text._tokenize(captions, server=object()) == published_tokens(captions) == {"a": ["the bird red"]}
    assert asked == [captions]


def test_server_scores_equal_the_published_meteor_bitwise_and_start_once(sock, monkeypatch):
    gts, runs = tokenized()
    starts = []
    real_popen = subprocess.Popen

    def spy(*a, **kw):
        if "megl.metrics.meteor_server" in a[0]:
            starts.append(a[0])
        return real_popen(*a, **kw)

    monkeypatch.setattr(meteor_server.subprocess, "Popen", spy)
    first = meteor_server.score(meteor_server.connect(), gts, runs)
    meteor = Meteor()  # pycocoevalcap as published, its own JVM
    try:
        published = [meteor.compute_score(gts, res)[0] for res in runs]
    finally:
        del meteor
    assert first == published  # exact float equality
    assert len(set(first)) == 3
    # the next job (text_metrics_many) finds the running server and starts no METEOR JVM of its own
    monkeypatch.setattr(text, "_meteor_scorer", lambda: pytest.fail("a job started its own METEOR JVM"))
    out = text_metrics_many(REFS, RUNS, spice=False)
    assert [out[r]["meteor"] for r in RUNS] == published
    assert len(starts) == 1 and sock.exists()


def test_started_server_is_no_child_of_the_job(sock):
    """The starter exits once the server has forked: the job's process tree (what Snakemake's
    benchmark measures) never holds the shared JVM."""
    psutil = pytest.importorskip("psutil")  # what Snakemake's benchmark uses

    conn = meteor_server.connect()
    assert conn is not None
    conn.close()
    tree = [p.cmdline() for p in psutil.Process().children(recursive=True)]
    assert not [c for c in tree if "megl.metrics.meteor_server" in " ".join(c) or "java" in " ".join(c)], tree


def test_unreachable_server_falls_back_to_own_jvm(tmp_path, monkeypatch):
    monkeypatch.delenv(meteor_server.DISABLE_ENV, raising=False)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert meteor_server.connect(blocker / "meteor.sock") is None
    foreign = tmp_path / "open"
    foreign.mkdir()
    foreign.chmod(0o777)  # others could plant a socket here: refused
    assert meteor_server.connect(foreign / "meteor.sock") is None
    monkeypatch.setenv(meteor_server.DISABLE_ENV, "0")
    assert meteor_server.connect(tmp_path / "ok" / "meteor.sock") is None
    # text_metrics_many then scores with its own scorer, the one it always used
    used = []

    @contextlib.contextmanager
    def own():
        used.append(1)
        yield "own"

    monkeypatch.setattr(text, "_tokenize", fake_tokenize)
    monkeypatch.setattr(text, "_meteor_scorer", own)
    monkeypatch.setattr(text, "_meteor_many", lambda scorer, gts, runs: [0.25] * len(runs))
    out = text_metrics_many(REFS, RUNS, spice=False)
    assert used == [1] and out[1]["meteor"] == 0.25


def test_dead_server_answer_falls_back(tmp_path):
    """A server that accepts but dies before answering: `score` gives None (the caller's fallback)."""
    import socket

    path = tmp_path / "meteor.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    conn = meteor_server._try_connect(path)
    peer, _ = listener.accept()
    peer.close()
    listener.close()
    assert meteor_server.score(conn, {0: ["a b"]}, [{0: ["a"]}]) is None


def test_server_exits_when_idle_and_removes_its_socket(tmp_path):
    path = tmp_path / "idle" / "meteor.sock"
    path.parent.mkdir(mode=0o700)
    proc = subprocess.Popen([sys.executable, "-m", "megl.metrics.meteor_server", "--socket", str(path),
                             "--idle", "1", "--foreground"])
    deadline = time.monotonic() + 60
    while not path.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists()
    assert proc.wait(timeout=60) == 0
    assert not path.exists()

"""One METEOR JVM shared by every text-scoring job on a machine: a unix-socket server started on demand.

The server also tokenizes: pycocoevalcap's PTBTokenizer starts a Java process per call (1-2 CPU-s,
two per job); the server keeps one tokenizer JVM (PTBTokenizerLoop.java: Stanford's
PTBTokenizer.main run once per request, as pycocoevalcap runs it once per JVM) and calls
pycocoevalcap's own `PTBTokenizer().tokenize` with that JVM standing in for its subprocess, so the
tokens are the published code's. A job whose request it cannot answer tokenizes with its own JVM.

METEOR's JVM spends 9-11 CPU-s loading its paraphrase table before its first answer, more than
scoring a cell's 5 seeds takes once it is warm. The first job that scores text starts this server
(under a file lock, detached from the job); later jobs connect to it; it exits by itself after
IDLE_S seconds without a request. A job that cannot reach it (no unix sockets, a foreign or stale
folder, the server died, MEGL_METEOR_SERVER=0) scores with its own JVM as before: same numbers,
since the server runs the same `_meteor_many` on the same pycocoevalcap process (the METEOR
line protocol is stateless between requests). docs/workflow.md describes the process model.

Hand-written on the standard library (socketserver, fcntl): no library serves a line-protocol JVM.
Requests and answers are one JSON line each (never pickle); floats survive JSON exactly (repr).

    python -m megl.metrics.meteor_server --socket PATH [--idle S]   # what `connect` starts
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import socket
import socketserver
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IDLE_S = 300.0        # the server exits after this long without a request
START_WAIT_S = 60.0   # how long a job waits for a server it started to accept connections
ANSWER_WAIT_S = 900.0  # a job gives up on an answer after this long (and scores with its own JVM)
DISABLE_ENV = "MEGL_METEOR_SERVER"  # "0": every job scores and tokenizes with its own JVMs
PTB_LOOP = Path(__file__).with_name("PTBTokenizerLoop.java")  # the long-lived tokenizer JVM's program


def _key() -> str:
    """Servers are shared only by jobs of the same interpreter, pycocoevalcap and server code."""
    import pycocoevalcap.meteor.meteor as meteor_mod
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb_mod

    h = hashlib.sha256()
    text_py = Path(__file__).with_name("text.py")  # the server runs its _meteor_many
    # the tokenizer JVM reads and writes in the starting job's locale: jobs of another locale get another server
    locale = "|".join(f"{v}={os.environ.get(v, '')}" for v in ("LC_ALL", "LC_CTYPE", "LANG", "JAVA_TOOL_OPTIONS"))
    for part in (sys.executable, meteor_mod.__file__, ptb_mod.__file__, Path(__file__).read_bytes(),
                 text_py.read_bytes(), PTB_LOOP.read_bytes(), locale):
        h.update(part if isinstance(part, bytes) else part.encode())
    return h.hexdigest()[:12]


def default_socket() -> Path:
    return Path(tempfile.gettempdir()) / f"megl-meteor-{os.getuid()}-{_key()}" / "meteor.sock"


def _private_dir(folder: Path) -> bool:
    """Create `folder` 0700, or accept it only if it is ours and closed to others."""
    try:
        folder.mkdir(mode=0o700, parents=False, exist_ok=True)
        st = folder.stat()
    except OSError:
        return False
    return st.st_uid == os.getuid() and not (st.st_mode & 0o077)


def _try_connect(path: Path) -> socket.socket | None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(str(path))
    except OSError:
        s.close()
        return None
    return s


def connect(path: Path | None = None, idle_s: float | None = None) -> socket.socket | None:
    """A connection to the server at `path`, starting it when none answers; None when no server
    can be had (the caller then scores with its own JVM)."""
    if os.environ.get(DISABLE_ENV, "1") == "0" or not hasattr(socket, "AF_UNIX"):
        return None
    try:
        import fcntl

        path = Path(path) if path is not None else default_socket()
        if not _private_dir(path.parent):
            return None
        conn = _try_connect(path)
        if conn is not None:
            return conn
        with open(path.parent / "start.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one starter; the others wait here, then connect
            conn = _try_connect(path)
            if conn is not None:
                return conn
            path.unlink(missing_ok=True)  # a stale socket of a server that is gone
            argv = [sys.executable, "-m", "megl.metrics.meteor_server", "--socket", str(path),
                    "--idle", str(IDLE_S if idle_s is None else idle_s)]
            with open(path.parent / "server.log", "ab") as log:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True, close_fds=True)
            proc.wait(timeout=START_WAIT_S)  # it forks the server and exits at once (see `main`)
            deadline = time.monotonic() + START_WAIT_S
            while proc.returncode == 0 and time.monotonic() < deadline:
                conn = _try_connect(path)
                if conn is not None:
                    return conn
                time.sleep(0.05)
            return None
    except (OSError, subprocess.SubprocessError):
        return None


def _ask(conn: socket.socket, request: dict) -> dict:
    """One request on `conn` and its answer ({} when none came); the connection stays open."""
    try:
        conn.settimeout(ANSWER_WAIT_S)
        with conn.makefile("rwb") as f:
            f.write(json.dumps(request).encode() + b"\n")
            f.flush()
            answer = json.loads(f.readline() or b"{}")
    except (OSError, ValueError):
        return {}
    return answer if isinstance(answer, dict) else {}


def tokenize(conn: socket.socket, captions: dict) -> dict | None:
    """pycocoevalcap's `PTBTokenizer().tokenize(captions)` ({key: [{"caption": text}, ...]}) run by
    the server's tokenizer JVM; `conn` stays open for the next request. None when the server did not
    answer (the caller then tokenizes with its own JVM)."""
    keys = list(captions)
    answer = _ask(conn, {"op": "tokenize", "captions": [[c["caption"] for c in captions[k]] for k in keys]})
    tokens = answer.get("tokens")
    if not isinstance(tokens, list) or len(tokens) != len(keys):
        return None
    # None: a key with no captions, absent as in PTBTokenizer's
    return {k: t for k, t in zip(keys, tokens) if t is not None}


def score(conn: socket.socket, gts: dict, runs: list[dict]) -> list[float] | None:
    """Corpus METEOR of each run as `megl.metrics.text._meteor_many` gives it, scored by the
    server on `conn` (closed afterwards); None when the server failed to answer."""
    keys = list(gts)
    with conn:
        answer = _ask(conn, {"gts": [gts[k] for k in keys], "runs": [[res[k] for k in keys] for res in runs]})
    scores = answer.get("scores")
    if not isinstance(scores, list) or len(scores) != len(runs):
        return None
    return [float(s) for s in scores]


class _TokenizerJVM:
    """One long-lived PTBTokenizer JVM standing in for the `subprocess` module of pycocoevalcap's
    ptbtokenizer: its `Popen(cmd, cwd, stdout)` checks the command is the published one, its
    `communicate` has the JVM tokenize the file that command names, exactly as a new JVM would.
    Started at once (it loads while METEOR does); restarted on the next request after a failure."""

    PIPE = subprocess.PIPE
    COMMAND = ("java", "-cp", "stanford-corenlp-3.4.1.jar", "edu.stanford.nlp.process.PTBTokenizer",
               "-preserveLines", "-lowerCase")

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.path: str | None = None

    def start(self) -> None:
        import pycocoevalcap.tokenizer.ptbtokenizer as ptb

        if self.proc is None or self.proc.poll() is not None:
            # stderr: the server's log (PTBTokenizer's one line of statistics per request, and any failure)
            self.proc = subprocess.Popen(["java", "-cp", ptb.STANFORD_CORENLP_3_4_1_JAR, str(PTB_LOOP)],
                                         cwd=os.path.dirname(ptb.__file__), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=sys.stderr)

    def stop(self) -> None:
        if self.proc is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def Popen(self, cmd, cwd, stdout):  # the name pycocoevalcap calls
        if tuple(cmd[:-1]) != self.COMMAND or stdout != subprocess.PIPE:
            raise ValueError(f"pycocoevalcap's PTBTokenizer runs {cmd[:-1]}, not the command PTBTokenizerLoop serves")
        self.path = os.path.join(cwd, cmd[-1])
        return self

    def communicate(self, input=None):  # pycocoevalcap passes input= (ignored: stdin is no pipe there)
        self.start()
        try:
            self.proc.stdin.write(self.path.encode() + b"\n")
            self.proc.stdin.flush()
            head = self.proc.stdout.readline().decode()
            if not head.startswith("OK "):
                raise OSError(f"the tokenizer JVM answered {head.strip()!r}")
            n = int(head[3:])
            out = self.proc.stdout.read(n)
            if len(out) != n:
                raise OSError("the tokenizer JVM closed its output")
        except (OSError, ValueError):
            self.stop()  # the next request starts a new JVM
            raise
        return out, None

    def tokenize(self, groups: list[list[str]]) -> list[list[str] | None]:
        """pycocoevalcap's PTBTokenizer().tokenize of {i: [{"caption": c} for c in groups[i]]}, by position."""
        from unittest import mock

        import pycocoevalcap.tokenizer.ptbtokenizer as ptb

        captions = {i: [{"caption": c} for c in g] for i, g in enumerate(groups)}
        with mock.patch.object(ptb, "subprocess", self), contextlib.redirect_stdout(sys.stderr):
            out = ptb.PTBTokenizer().tokenize(captions)
        return [out.get(i) for i in range(len(groups))]


class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        """Requests on one connection (one JSON line each), answered in turn until the job closes it."""
        for line in self.rfile:
            answer, what = self.answer(line)
            with contextlib.suppress(OSError):
                self.wfile.write(json.dumps(answer).encode() + b"\n")
                self.wfile.flush()
            self.server.last = time.monotonic()
            print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} pid {os.getpid()}: {answer.get('error') or what}",
                  file=sys.stderr, flush=True)
            if self.server.dead:
                return

    def answer(self, line: bytes) -> tuple[dict, str]:
        from megl.errors import MEGLError
        from megl.metrics.text import _meteor_many

        try:
            req = json.loads(line)
            if req.get("op") == "tokenize":
                tokens = self.server.tokenizer.tokenize(req["captions"])
                return {"tokens": tokens}, f"{len(tokens)} caption groups tokenized"
            gts = dict(enumerate(req["gts"]))
            runs = [dict(enumerate(run)) for run in req["runs"]]
            scores = _meteor_many(self.server.scorer, gts, runs)
            return {"scores": scores}, f"{len(scores)} runs scored"
        except (ValueError, KeyError, TypeError, AttributeError, OSError, MEGLError) as e:
            if isinstance(e, MEGLError) and "scorer failed" in str(e):
                self.server.dead = True  # the JVM is gone: stop serving, jobs start a new server
            return {"error": f"{type(e).__name__}: {e}"}, ""


def serve(path: Path, idle_s: float) -> int:
    """Start the JVM, then answer requests one at a time until `idle_s` pass without one."""
    import signal

    from megl.metrics.text import _meteor_scorer

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # Slurm's end of job: stop the JVMs, drop the socket
    tokenizer = _TokenizerJVM()
    with contextlib.suppress(OSError):
        tokenizer.start()  # else the first tokenize request tries again (and its job falls back)
    with _meteor_scorer() as scorer:  # the JVMs load while the socket opens
        server = socketserver.UnixStreamServer(str(path), _Handler)
        inode = path.stat().st_ino
        server.scorer, server.tokenizer = scorer, tokenizer
        server.dead, server.timeout, server.last = False, 1.0, time.monotonic()
        try:
            while not server.dead and time.monotonic() - server.last < idle_s:
                server.handle_request()  # returns after server.timeout when nobody connects
        finally:
            with contextlib.suppress(OSError):  # first the name: a job that finds none starts a new server
                if path.stat().st_ino == inode:
                    path.unlink()
            server.server_close()
            tokenizer.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m megl.metrics.meteor_server", description=__doc__.splitlines()[0])
    p.add_argument("--socket", required=True, type=Path)
    p.add_argument("--idle", type=float, default=IDLE_S, help="exit after this many seconds without a request")
    p.add_argument("--foreground", action="store_true", help="serve in this process (default: fork and return)")
    args = p.parse_args(argv)
    if not args.foreground and os.fork() > 0:
        # The starter returns at once, so the server is no descendant of the job that started it:
        # Snakemake's per-job benchmark (CPU, memory) never counts the shared JVM.
        return 0
    return serve(args.socket, args.idle)


if __name__ == "__main__":
    sys.exit(main())

"""The report steps' edges: the manuscript inputs and the PDF build without latexmk; and the headless
Chromium check of an HTML report (`render_headless`, and `render_report_result`, which opens one
result in the report's own viewer; used on the smoke run's `snakemake --report` by
tests/test_workflow.py), tried here on small pages and a one-rule Snakemake report."""
from __future__ import annotations

import base64
import html as html_lib
import json
import re
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

import pytest

from megl.errors import MEGLError
from megl.report import build


def test_pdf_without_latexmk_says_so_in_one_line(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(build.shutil, "which", lambda name: None)
    assert build.build_pdf(tmp_path) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "latexmk not found" in out[0] and "apt-get install latexmk" in out[0]
    assert not (tmp_path / "main.pdf").exists()


def test_paper_inputs_name_the_missing_table(tmp_path: Path) -> None:
    tables, figures, out = tmp_path / "tables", tmp_path / "figures", tmp_path / "generated"
    tables.mkdir()
    figures.mkdir()
    for stem in build.TABLE_STEMS[:-1]:
        (tables / f"{stem}.tex").write_text(stem)
    with pytest.raises(MEGLError, match="claims.tex"):
        build.copy_for_paper(tables, figures, out)


def test_paper_inputs_copy_tables_and_figure_pdfs(tmp_path: Path) -> None:
    tables, figures, out = tmp_path / "tables", tmp_path / "figures", tmp_path / "generated"
    tables.mkdir()
    figures.mkdir()
    for stem in build.TABLE_STEMS:
        (tables / f"{stem}.tex").write_text(f"% {stem}")
    (figures / "accuracy.pdf").write_bytes(b"%PDF-1.4 fake")
    (figures / "accuracy.png").write_bytes(b"png")
    written = build.copy_for_paper(tables, figures, out, ["config/smoke_2.yaml"])
    assert sorted(p.name for p in written) == sorted([f"{s}.tex" for s in build.TABLE_STEMS]
                                                     + ["accuracy.pdf", build.CONFIG_TEX])
    assert (out / "claims.tex").read_text() == "% claims"
    # the manuscript names the config file the run was built from, escaped for LaTeX
    assert (out / build.CONFIG_TEX).read_text() == "\\texttt{config/smoke\\_2.yaml}%\n"
    main = (Path(__file__).resolve().parents[1] / "paper" / "main.tex").read_text()
    assert r"\input{\gen{config.tex}}" in main and r"\usepackage[T1]{fontenc}" in main
    assert r"run matrix in \texttt{config/config.yaml}" not in main


# ------------------------------------------------------------------ headless Chromium
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_TIMEOUT_S = 90
# Text of Snakemake's report (9.x) that only its scripts draw: the static page says "Loading Snakemake Report...".
SNAKEMAKE_REPORT_RENDERED = ("Workflow", "Statistics", "Results", "About")
# Injected at the top of <head> in a copy of the page: records console.error, uncaught exceptions,
# unhandled rejections and failed resource loads on <html data-megl-errors="[...]"> for --dump-dom.
# (Chromium's own log prints every console message as INFO, whatever its level.)
ERROR_PROBE = """<script>(function () {
  var errors = [];
  function add(msg) {
    errors.push(String(msg)); document.documentElement.setAttribute("data-megl-errors", JSON.stringify(errors));
  }
  var consoleError = console.error;
  console.error = function () {
    add(Array.prototype.join.call(arguments, " ")); return consoleError.apply(console, arguments);
  };
  window.addEventListener("error", function (e) {
    add(e.message || ("failed to load " + (e.target && (e.target.src || e.target.href))));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { add("unhandled rejection: " + e.reason); });
})();</script>"""


def chromium() -> str | None:
    return next((shutil.which(n) for n in CHROMIUM_NAMES if shutil.which(n)), None)


def need_chromium() -> str:
    exe = chromium()
    if exe is None:
        pytest.skip("Chromium not installed (apt-get install chromium): the page was not rendered headless")
    return exe


def _chromium(exe: str, *args: str, page: Path) -> subprocess.CompletedProcess:
    """One headless Chromium call with its own profile (parallel runs, root: --no-sandbox); a hang
    fails after CHROMIUM_TIMEOUT_S with a message that says so."""
    with tempfile.TemporaryDirectory(prefix="megl-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--no-first-run", "--no-default-browser-check", f"--user-data-dir={profile}",
               "--enable-logging=stderr", "--v=0", *args, page.as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"headless Chromium did not finish within {CHROMIUM_TIMEOUT_S} s on {page} (a hang of the "
                        f"browser, not of the report; rerun the test, or run by hand: {' '.join(cmd)})")
    if proc.returncode != 0:
        pytest.fail(f"headless Chromium exited {proc.returncode} on {page} (the browser failed, not the report "
                    f"check):\n{proc.stderr[-3000:]}")
    return proc


def render_headless(page: Path, screenshot: Path, expect: tuple[str, ...] = ()) -> str:
    """Load `page` in headless Chromium: no console error, uncaught exception or failed load, every
    `expect` string in the rendered text (scripts removed), and a non-blank `screenshot`. Returns the
    rendered text."""
    exe = need_chromium()
    source = page.read_text(encoding="utf-8", errors="replace")
    probed = page.with_name(f".{page.stem}.probe.html")  # beside the page: relative links still resolve
    head = re.search(r"<head[^>]*>", source, flags=re.IGNORECASE)
    at = head.end() if head else 0
    probed.write_text(source[:at] + ERROR_PROBE + source[at:], encoding="utf-8")
    try:
        proc = _chromium(exe, "--virtual-time-budget=15000", "--dump-dom", page=probed)
    finally:
        probed.unlink(missing_ok=True)
    dom = proc.stdout
    found = re.search(r'<html[^>]*\sdata-megl-errors="([^"]*)"', dom)
    errors = json.loads(html_lib.unescape(found.group(1))) if found else []
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    assert not errors, (f"{page} logs errors when rendered in headless Chromium: {errors}\n"
                        f"console:\n" + "\n".join(console[-20:]))
    text = re.sub(r"<script\b.*?</script>|<style\b.*?</style>", " ", dom, flags=re.IGNORECASE | re.DOTALL)
    text = html_lib.unescape(re.sub(r"<[^>]+>", " ", text))
    missing = [s for s in expect if s not in text]
    assert not missing, f"{page}: not rendered (missing from the page after its scripts ran: {missing})"

    screenshot.parent.mkdir(parents=True, exist_ok=True)
    screenshot.unlink(missing_ok=True)
    _chromium(exe, f"--screenshot={screenshot}", "--window-size=1280,2000", "--hide-scrollbars",
              "--virtual-time-budget=15000", page=page)
    assert screenshot.exists(), f"headless Chromium wrote no screenshot of {page} to {screenshot}"
    from PIL import Image

    with Image.open(screenshot) as img:
        low, high = img.convert("L").getextrema()
    assert low < high, f"the screenshot of {page} ({screenshot}) is blank"
    return text


# Appended at the end of <body> in a copy of a Snakemake report: once the page has loaded, the result
# named NAME is opened the way its eye button opens it (the report's own ButtonViewManager, which picks
# the view by the result's mime type: an iframe for text/html, a download link otherwise), and what
# happened is recorded on <html data-megl-view="..."> for --dump-dom.
OPEN_RESULT = """<script>window.addEventListener("load", function () { setTimeout(function () {
  var mark = function (what) { document.documentElement.setAttribute("data-megl-view", what); };
  try {
    var path = Object.keys(results).filter(function (p) { return p.split("/").pop() === %s; })[0];
    if (!path) { mark("no result named " + %s); return; }
    var button = new ButtonViewManager(app).handleSelectedResult(path);
    if (!button.props.onClick) { mark("a link only (" + results[path].mime_type + ")"); return; }
    button.props.onClick();
    mark("opened " + results[path].mime_type);
  } catch (err) { mark("failed: " + err); }
}, 100); });</script>"""


def decode_data_uri(uri: str) -> bytes:
    header, _, payload = uri.partition(",")
    return base64.b64decode(payload) if header.endswith(";base64") else urllib.parse.unquote_to_bytes(payload)


def render_report_result(report: Path, name: str, screenshot: Path, expect: tuple[str, ...]) -> str:
    """Open the result `name` (a file name, e.g. table2.html) of a Snakemake report in headless
    Chromium as its eye button does: it must open in the report's own view (an iframe), and the page
    shown there must render every `expect` string as text. Screenshot: the report with that view
    open. Returns the rendered text of the page in the view."""
    exe = need_chromium()
    source = report.read_text(encoding="utf-8", errors="replace")
    at = source.lower().rfind("</body>")
    opened = report.with_name(f".{report.stem}.open.html")
    quoted = json.dumps(name)
    opened.write_text(source[:at] + OPEN_RESULT % (quoted, quoted) + source[at:], encoding="utf-8")
    try:
        dom = _chromium(exe, "--virtual-time-budget=15000", "--dump-dom", page=opened).stdout
        state = re.search(r'<html[^>]*\sdata-megl-view="([^"]*)"', dom)
        assert state and state.group(1) == "opened text/html", (
            f"{report}: {name} did not open in the report's view: {state.group(1) if state else 'script never ran'}")
        frame = re.search(r'<iframe[^>]*\ssrc="(data:[^"]+)"', dom)
        assert frame, f"{report}: {name} opened, but no iframe shows it"
        with tempfile.TemporaryDirectory(prefix="megl-view-") as tmp:  # the page the view shows, decoded
            shown = Path(tmp) / name
            shown.write_bytes(decode_data_uri(html_lib.unescape(frame.group(1))))
            text = render_headless(shown, Path(tmp) / "view.png", expect=expect)
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        screenshot.unlink(missing_ok=True)
        _chromium(exe, f"--screenshot={screenshot}", "--window-size=1280,1000", "--hide-scrollbars",
                  "--virtual-time-budget=15000", page=opened)
        assert screenshot.exists(), f"headless Chromium wrote no screenshot of {report} to {screenshot}"
    finally:
        opened.unlink(missing_ok=True)
    return text


def test_render_headless_catches_console_errors_and_exceptions(tmp_path: Path) -> None:
    need_chromium()
    page = tmp_path / "broken.html"
    page.write_text("<html><head></head><body><p>text</p><script>console.error('quiet failure');"
                    "missingFunction();</script></body></html>")
    with pytest.raises(AssertionError) as err:
        render_headless(page, tmp_path / "broken.png")
    assert "quiet failure" in str(err.value) and "missingFunction" in str(err.value)


def test_render_headless_checks_what_scripts_render(tmp_path: Path) -> None:
    need_chromium()
    page = tmp_path / "ok.html"
    page.write_text("<html><head><title>t</title></head><body><div id=app></div><script>"
                    "document.getElementById('app').textContent = 'drawn by ' + 'script';</script></body></html>")
    text = render_headless(page, tmp_path / "ok.png", expect=("drawn by script",))
    assert "drawn by script" in text and (tmp_path / "ok.png").stat().st_size > 1000
    with pytest.raises(AssertionError, match="not rendered"):
        render_headless(page, tmp_path / "ok.png", expect=("a caption that is not there",))


@pytest.mark.slow
def test_snakemake_report_of_a_one_rule_workflow_renders(tmp_path: Path) -> None:
    """`snakemake --report` (the same Snakemake as the workflow's) on a one-rule workflow: the page
    Snakemake writes renders in headless Chromium without errors."""
    need_chromium()
    from megl.bench.workflow import snakemake_cmd, tool_env

    (tmp_path / "caption.rst").write_text("**A one-row table.** Made by the test.\n")
    (tmp_path / "Snakefile").write_text(
        'rule all:\n    output: report("table.csv", caption="caption.rst", category="Tables"),\n'
        '            report("table.html", caption="caption.rst", category="Tables")\n'
        '    shell: "echo a,b > {output[0]} && echo \'<table><tr><td>cell-4217</td></tr></table>\' > {output[1]}"\n')
    for args in (("--cores", "1"), ("--report", "report.html")):
        proc = subprocess.run(snakemake_cmd(*args), cwd=tmp_path, env=tool_env(), capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
    render_headless(tmp_path / "report.html", tmp_path / "report.png", expect=SNAKEMAKE_REPORT_RENDERED)
    text = render_report_result(tmp_path / "report.html", "table.html", tmp_path / "view.png", expect=("cell-4217",))
    assert "cell-4217" in text and (tmp_path / "view.png").stat().st_size > 1000
    with pytest.raises(AssertionError, match="cell-9999"):  # the check reads the page: a value not in it fails
        render_report_result(tmp_path / "report.html", "table.html", tmp_path / "view.png", expect=("cell-9999",))
    with pytest.raises(AssertionError, match="did not open in the report's view: a link only"):
        render_report_result(tmp_path / "report.html", "table.csv", tmp_path / "view.png", expect=("a",))

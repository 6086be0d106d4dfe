"""The run's closing story (megl.report.story): the report, the claims, the tables and figures by path."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from megl.report.story import story


def make_results(root: Path) -> Path:
    tables, figures = root / "tables", root / "figures"
    tables.mkdir(parents=True)
    figures.mkdir()
    for stem in ("validity", "table2", "claims", "table5"):
        (tables / f"{stem}.csv").write_text("a\n1\n")
    for stem in ("table2", "claims", "table5"):
        (tables / f"{stem}.md").write_text("| a |\n")
    for stem in ("qualitative", "accuracy"):
        (figures / f"{stem}.png").write_bytes(b"png")
        (figures / f"{stem}.pdf").write_bytes(b"pdf")
    return root


def test_story_names_every_output_in_reading_order(tmp_path):
    results = make_results(tmp_path / "results" / "smoke")
    report = results / "report.html"
    lines = story(results, report, "make smoke")
    assert lines[1] == f"  report   {report}  (not built yet: make smoke)"
    assert lines[2].startswith(f"  claims   {results / 'tables' / 'claims.md'}")
    paths = [line.split()[-1] for line in lines[3:-1]]
    assert paths == [str(results / "tables" / n) for n in ("table2.md", "table5.md", "validity.csv")] + \
        [str(results / "figures" / n) for n in ("accuracy.png", "qualitative.png")]
    assert lines[3].startswith("  tables ") and lines[6].startswith("  figures ")

    report.write_text("<html></html>")
    assert story(results, report)[1] == f"  report   {report}  (open in a browser)"
    old = (results / "tables" / "table2.csv").stat().st_mtime - 60
    os.utime(report, (old, old))  # tables rewritten after the report: it is stale
    assert "older than the tables: make report" in story(results, report)[1]


def test_story_of_an_empty_results_dir_says_so(tmp_path):
    lines = story(tmp_path / "nothing", tmp_path / "nothing" / "report.html")
    assert any("tables   (none under" in line for line in lines)
    assert any("figures  (none under" in line for line in lines)


def test_story_command_line(tmp_path):
    results = make_results(tmp_path / "r")
    proc = subprocess.run([sys.executable, "-m", "megl.report.story", "--results", str(results), "--report",
                           str(results / "report.html"), "--report-command", "make smoke"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0 and "not built yet: make smoke" in proc.stdout and "table2.md" in proc.stdout

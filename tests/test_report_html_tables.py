"""The report's HTML tables (megl.report.html_tables): every cell of the CSV, as written, in a
self-contained page; the claims page holds validity and comparisons; a missing CSV is named."""
from __future__ import annotations

import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from megl.errors import MEGLError
from megl.report import html_tables


class _Cells(HTMLParser):
    """Text of every <th>/<td>, table by table; and every tag that would load something."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.loads: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        if tag == "script" or attrs.get("src") or (tag == "link" and attrs.get("href")):
            self.loads.append(tag)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def parse(path: Path) -> _Cells:
    cells = _Cells()
    cells.feed(path.read_text(encoding="utf-8"))
    return cells


def write_tables(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "table2.csv").write_text(
        "Dataset,Backbone,Method,Accuracy,mIoU\n"
        "objects (stand-in),ResNet18-narrow,baseline,.7413 ± .0021 (n=3),missing\n"
        "objects (stand-in),ResNet18-narrow,MEGL,.7520 ± .0100 (n=3),n/a (no saliency map)\n"
        "objects (stand-in),ViT-tiny,<b>odd</b> & name,NA,\n", encoding="utf-8")
    (folder / "validity.csv").write_text("dataset,backbone,valid,reason\nobjects,resnet18,False,below chance\n")
    (folder / "claims.csv").write_text("claim,a,b,verdict\n")  # every cell invalid: the header alone
    return folder


def test_table_page_holds_every_cell_as_written(tmp_path):
    tables = write_tables(tmp_path / "tables")
    [page] = html_tables.write_pages(tables, tmp_path / "html", ["table2"])
    cells = parse(page)
    assert cells.loads == []  # self-contained: no script, no external file
    [table] = cells.tables
    assert table[0] == ["Dataset", "Backbone", "Method", "Accuracy", "mIoU"]
    assert table[1] == ["objects (stand-in)", "ResNet18-narrow", "baseline", ".7413 ± .0021 (n=3)", "missing"]
    assert table[2][-1] == "n/a (no saliency map)"
    assert table[3] == ["objects (stand-in)", "ViT-tiny", "<b>odd</b> & name", "NA", ""]  # escaped, not NaN
    assert "<b>odd</b>" not in page.read_text(encoding="utf-8")
    assert "Table 2: classification and visual explanation" in page.read_text(encoding="utf-8")


def test_claims_page_holds_validity_then_comparisons(tmp_path):
    tables = write_tables(tmp_path / "tables")
    [page] = html_tables.write_pages(tables, tmp_path / "html", ["claims"])
    text = page.read_text(encoding="utf-8")
    cells = parse(page)
    assert cells.tables[0][1] == ["objects", "resnet18", "False", "below chance"]
    assert cells.tables[1] == [["claim", "a", "b", "verdict"]]  # the header, no row
    assert text.index("Cell validity") < text.index("Every comparison")


def test_missing_csv_is_named(tmp_path):
    tables = write_tables(tmp_path / "tables")
    with pytest.raises(MEGLError, match="table3.csv"):
        html_tables.write_pages(tables, tmp_path / "html", ["table3"])
    with pytest.raises(MEGLError, match="no HTML page named 'table9'"):
        html_tables.write_pages(tables, tmp_path / "html", ["table9"])


def test_command_line_writes_the_pages(tmp_path):
    tables = write_tables(tmp_path / "tables")
    out = tmp_path / "html"
    proc = subprocess.run([sys.executable, "-m", "megl.report.html_tables", "--tables", str(tables), "--out", str(out),
                           "table2", "claims"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["claims.html", "table2.html"]
    proc = subprocess.run([sys.executable, "-m", "megl.report.html_tables", "--tables", str(tables), "--out", str(out),
                           "table4"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and "table4.csv" in proc.stderr

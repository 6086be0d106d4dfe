"""The report steps' edges: the manuscript inputs and the PDF build without latexmk."""
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
    written = build.copy_for_paper(tables, figures, out)
    assert sorted(p.name for p in written) == sorted([f"{s}.tex" for s in build.TABLE_STEMS] + ["accuracy.pdf"])
    assert (out / "claims.tex").read_text() == "% claims"

"""Each table of the report as a small self-contained HTML page (pandas `to_html` of the CSV the
`tables` step wrote, one inline stylesheet, no script, no external file), so that Snakemake's report
shows it as a table in its viewer (an .html result opens inside the report; a .md one is only a link).
docs/report.md says why this and not datavzrd.

    python -m megl.report.html_tables --tables results/tables --out results/tables/html
"""
from __future__ import annotations

import argparse
import html
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from megl.errors import MEGLError
from megl.io import write_text

# page stem → (title, [(section heading, CSV stem)]); the claims page holds the validity verdicts
# the claims are conditioned on, then every comparison.
PAGES: dict[str, tuple[str, list[tuple[str, str]]]] = {
    "table2": ("Table 2: classification and visual explanation", [("", "table2")]),
    "table3": ("Table 3: textual explanation quality", [("", "table3")]),
    "table4": ("Table 4: ablation", [("", "table4")]),
    "table5": ("Table 5: efficiency", [("", "table5")]),
    "paper_vs_ours": ("Paper vs ours", [("", "paper_vs_ours")]),
    "shortcut": ("What the shortcut costs the baseline", [("", "shortcut")]),
    "claims": ("The paper's claims, checked on our runs",
               [("Cell validity (computed before the claims)", "validity"), ("Every comparison", "claims")]),
}

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; font-size: 14px;
       color: #1f2328; margin: 1.2em; }
h1 { font-size: 1.25em; margin: 0 0 .6em; }
h2 { font-size: 1.05em; margin: 1.4em 0 .5em; }
p.source { color: #57606a; font-size: .85em; margin: .2em 0 .8em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #f0f3f6; position: sticky; top: 0; }
tbody tr:nth-child(even) { background: #f8fafc; }
p.empty { font-style: italic; }
"""


def read_table(csv_path: Path) -> pd.DataFrame:
    """The CSV as strings, exactly as written ("missing", "n/a (...)", ".7413 ± .0021 (n=3)" stay)."""
    try:
        return pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()
    except (OSError, pd.errors.ParserError) as exc:
        raise MEGLError(f"{csv_path}: cannot read the table ({exc})") from exc


def table_html(frame: pd.DataFrame) -> str:
    """The table (its header even without a row, then "(no rows)")."""
    if not len(frame.columns):
        return '<p class="empty">(no rows)</p>'
    table = frame.to_html(index=False, escape=True, border=0, na_rep="")
    return table if len(frame) else table + '\n<p class="empty">(no rows)</p>'


def page_html(title: str, sections: Sequence[tuple[str, Path]]) -> str:
    """One page: the title, then per section its heading, the CSV it comes from and the table."""
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             f"<h1>{html.escape(title)}</h1>"]
    for heading, csv_path in sections:
        if heading:
            parts.append(f"<h2>{html.escape(heading)}</h2>")
        parts.append(f'<p class="source">from {html.escape(csv_path.name)}</p>')
        parts.append(table_html(read_table(csv_path)))
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_pages(tables_dir: Path, out_dir: Path, stems: Sequence[str] | None = None) -> list[Path]:
    """Write `<out_dir>/<stem>.html` for every page of PAGES (or `stems`) from the CSVs in
    `tables_dir`; a missing CSV stops with a MEGLError naming it."""
    written = []
    for stem in stems or list(PAGES):
        if stem not in PAGES:
            raise MEGLError(f"no HTML page named {stem!r} (known: {', '.join(PAGES)})")
        title, sections = PAGES[stem]
        paths = [(heading, Path(tables_dir) / f"{csv}.csv") for heading, csv in sections]
        missing = [str(p) for _, p in paths if not p.exists()]
        if missing:
            raise MEGLError(f"cannot write {stem}.html: {', '.join(missing)} not found (run the tables step first)")
        out = Path(out_dir) / f"{stem}.html"
        write_text(out, page_html(title, paths))
        written.append(out)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megl.report.html_tables", description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", required=True, type=Path, help="folder of the tables step's CSVs")
    parser.add_argument("--out", required=True, type=Path, help="folder of the HTML pages")
    parser.add_argument("stems", nargs="*", help=f"pages to write (default: all of {', '.join(PAGES)})")
    args = parser.parse_args(argv)
    try:
        for path in write_pages(args.tables, args.out, args.stems):
            print(path)
    except MEGLError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

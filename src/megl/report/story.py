"""Where a finished run's results are: the report, the claims, the tables and the figures, printed at
the end of every Snakemake run of the workflow (its `onsuccess:` handler) and of `make smoke`.

    python -m megl.report.story --results results/smoke --report results/smoke/report.html
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

# in the order a reader opens them: the paper's tables, then the checks of our own
TABLE_ORDER = ("table2", "table3", "table4", "table5", "paper_vs_ours", "shortcut", "validity", "paper_vs_ours_tau")
FIGURE_ORDER = ("accuracy", "miou", "ablation", "forest", "training", "qualitative")


def _ordered(paths: list[Path], order: Sequence[str]) -> list[Path]:
    return sorted(paths, key=lambda p: (order.index(p.stem) if p.stem in order else len(order), p.name))


def story(results_dir: str | Path, report: str | Path, report_command: str = "make report") -> list[str]:
    """The lines to print: what exists under `results_dir` (tables as .md, else .csv; figures as .png)
    and the report, or how to build it when it is missing or older than the tables."""
    results = Path(results_dir)
    tables_dir, figures_dir, report = results / "tables", results / "figures", Path(report)
    lines = [f"Results of this run (results_dir {results}):"]
    tables = [p for p in tables_dir.glob("*.md") if p.stem != "claims"] if tables_dir.is_dir() else []
    tables += [p for p in tables_dir.glob("*.csv") if not p.with_suffix(".md").exists()] if tables_dir.is_dir() else []
    newest = max((p.stat().st_mtime for p in tables_dir.glob("*.csv")), default=0.0) if tables_dir.is_dir() else 0.0
    if report.exists() and report.stat().st_mtime >= newest:
        lines.append(f"  report   {report}  (open in a browser)")
    else:
        state = "older than the tables" if report.exists() else "not built yet"
        lines.append(f"  report   {report}  ({state}: {report_command})")
    claims = tables_dir / "claims.md"
    if claims.exists():
        lines.append(f"  claims   {claims}  (validity, verdicts; claims.csv has every comparison)")
    for label, paths in (("tables", _ordered(tables, TABLE_ORDER)),
                         ("figures", _ordered(list(figures_dir.glob("*.png")) if figures_dir.is_dir() else [],
                                              FIGURE_ORDER))):
        if not paths:
            lines.append(f"  {label:8} (none under {results})")
            continue
        for i, path in enumerate(paths):
            lines.append(f"  {label if i == 0 else '':8} {path}")
    if tables:
        lines.append("  (each table also as .csv, .tex and .html beside it; figures also as .pdf)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m megl.report.story", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, help="the run's results_dir")
    parser.add_argument("--report", required=True, help="the HTML report's path")
    parser.add_argument("--report-command", default="make report", help="how to build the report (printed)")
    args = parser.parse_args(argv)
    print("\n".join(story(args.results, args.report, args.report_command)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

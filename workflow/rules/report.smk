# Aggregation of every run into the paper's tables, the claims, figures and the manuscript.
# Output lists and report_outputs() live in common.smk (lint: no functions among rules).


rule tables:
    input:
        metrics=all_metrics(),
        published="config/published.yaml",
        code=code_deps("tables"),
    output:
        TABLES,  # the report shows each as an HTML page (rule html_tables)
    params:
        config_file=CONFIG_FILE,
        megl=MEGL,
        results=lambda w, input: subpath(input.metrics[0], ancestor=6),  # <results>/runs/d/b/m/seedN/metrics.json
        out=subpath(output[0], parent=True),
        twins=CONTROL_TWINS,  # the validity and shortcut tables read datasets.<twin>.control_for
    benchmark:
        f"{RESULTS}/benchmarks/report/tables.tsv"
    log:
        f"{RESULTS}/logs/report/tables.log",
    resources:
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} tables --config {params.config_file} --results {params.results} --out {params.out} "
        "--published {input.published} > {log} 2>&1"


rule html_tables:
    input:
        tables=[t for t in TABLES if t.endswith(".csv")],
        code=[os.path.join(_MEGL_SRC, *f) for f in (("report", "html_tables.py"), ("io.py",), ("errors.py",))],
    output:
        [
            report(t, category="Tables", caption=f"../report/{Path(t).stem}.rst", labels={"table": Path(t).name})
            for t in HTML_TABLES
        ],
    params:
        python=PYTHON,
        tables=lambda w, input: subpath(input.tables[0], parent=True),
        out=subpath(output[0], parent=True),
    benchmark:
        f"{RESULTS}/benchmarks/report/html_tables.tsv"
    log:
        f"{RESULTS}/logs/report/html_tables.log",
    conda:
        CONDA_ENV
    shell:
        "{params.python} -m megl.report.html_tables --tables {params.tables} --out {params.out} > {log} 2>&1"


rule figures:
    input:
        metrics=all_metrics(),
        code=code_deps("figures"),
    output:
        [
            report(f, category="Figures", caption=f"../report/{Path(f).stem}.rst", labels={"figure": Path(f).name})
            if f.endswith(".png")
            else f
            for f in FIGURES
        ],
    params:
        config_file=CONFIG_FILE,
        megl=MEGL,
        results=lambda w, input: subpath(input.metrics[0], ancestor=6),  # <results>/runs/d/b/m/seedN/metrics.json
        out=subpath(output[0], parent=True),
    benchmark:
        f"{RESULTS}/benchmarks/report/figures.tsv"
    log:
        f"{RESULTS}/logs/report/figures.log",
    resources:
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} figures --config {params.config_file} --results {params.results} --out {params.out} > {log} 2>&1"


rule paper_inputs:
    input:
        tables=TABLES,
        figures=FIGURES,
        code=code_deps("paper"),
    output:
        touch(f"{PAPER_GENERATED}/.inputs_done"),
    params:
        megl=MEGL,
        tables=lambda w, input: subpath(input.tables[0], parent=True),
        figures=lambda w, input: subpath(input.figures[0], parent=True),
        out=lambda w, output: subpath(output[0], parent=True),
        config_files=" ".join(f"--config-file {shlex.quote(f)}" for f in CONFIG_SOURCES),
    benchmark:
        f"{RESULTS}/benchmarks/report/paper_inputs.tsv"
    log:
        f"{RESULTS}/logs/report/paper_inputs.log",
    conda:
        CONDA_ENV
    shell:
        "{params.megl} paper --tables {params.tables} --figures {params.figures} --out {params.out} "
        "{params.config_files} > {log} 2>&1"


rule paper_pdf:
    input:
        "paper/generated/.inputs_done",
        "paper/main.tex",
        ancient(PREFLIGHT),  # latexmk checked first (with --pdf) when the PDF is asked for
        code=code_deps("paper"),
    output:
        "paper/main.pdf",
    params:
        megl=MEGL,
        tables=f"{RESULTS}/tables",
        figures=f"{RESULTS}/figures",
    benchmark:
        f"{RESULTS}/benchmarks/report/paper_pdf.tsv"
    log:
        f"{RESULTS}/logs/report/paper_pdf.log",
    conda:
        CONDA_ENV
    shell:
        "{params.megl} paper --tables {params.tables} --figures {params.figures} --out paper/generated --pdf > {log} 2>&1"


rule summarize:
    input:
        metrics=all_metrics(),
        code=code_deps("summarize"),
    output:
        metrics=directory(f"{RESULTS}/metrics"),
        plots=directory(f"{RESULTS}/plots"),  # plot data for dvc plots (loss/, accuracy/, miou/)
    params:
        config_file=CONFIG_FILE,
        megl=MEGL,
        results=lambda w, input: subpath(input.metrics[0], ancestor=6),  # <results>/runs/d/b/m/seedN/metrics.json
    benchmark:
        f"{RESULTS}/benchmarks/report/summarize.tsv"
    log:
        f"{RESULTS}/logs/report/summarize.log",
    resources:
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} summarize --config {params.config_file} --results {params.results} --out {output.metrics} "
        "--plots {output.plots} > {log} 2>&1"

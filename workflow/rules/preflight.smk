# Preflight, first in the DAG: Java (when a method of the matrix writes text: its evaluation runs the
# Java caption scorers) and latexmk (when the PDF is asked for). It depends on nothing and has the
# highest priority, so the scheduler starts it before any other job, and a missing tool fails the
# workflow within seconds with the install command, not at the first evaluation an hour later. No
# other rule takes its output as input, so adding or re-running it never re-runs a result. Its only
# inputs are source files (its code), which no job makes: it still depends on no other job.


rule preflight:
    input:
        code=code_deps("preflight"),
    output:
        PREFLIGHT,
    params:
        megl=MEGL,
        config_file=CONFIG_FILE,
        pdf="--pdf" if PDF_ASKED else "",
    priority: 1000
    log:
        f"{RESULTS}/logs/preflight.log",
    conda:
        CONDA_ENV
    shell:
        "{params.megl} preflight --config {params.config_file} {params.pdf} --out {output} > {log} 2>&1 "
        "|| {{ cat {log} >&2; exit 1; }}"

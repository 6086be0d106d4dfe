# The MEGL replication workflow. Rules live in workflow/; this file includes them and names the
# default target (Snakemake lets only the main Snakefile choose it).
include: "workflow/Snakefile"


rule all:
    default_target: True
    input:
        report_outputs(),


# Light steps run in the Snakemake process itself, also on a cluster: the aggregate target, the
# preflight check, and the aggregation of finished runs (seconds each; an sbatch job would wait longer).
localrules:
    all,
    preflight,
    tables,
    html_tables,
    figures,
    summarize,
    paper_inputs,

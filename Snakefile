# The MEGL replication workflow. Rules live in workflow/; this file includes them and names the
# default target (Snakemake lets only the main Snakefile choose it).
include: "workflow/Snakefile"


rule all:
    default_target: True
    input:
        report_outputs(),


localrules:
    all,
    preflight,

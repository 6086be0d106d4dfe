# Data: the stand-ins are generated here (embedded default); the official ME zips are unpacked.


rule make_standin:
    input:
        code=code_deps("make-standin"),
    output:
        directory(f"{RESULTS}/standin/{{dataset}}"),
    params:
        megl=MEGL,
        config_file=CONFIG_FILE,
        knobs=lambda w: config["datasets"][w.dataset]["standin"],  # re-run triggers: what the command reads
        split=config["split"],
    benchmark:
        f"{RESULTS}/benchmarks/data/{{dataset}}_standin.tsv"
    log:
        f"{RESULTS}/logs/data/{{dataset}}_standin.log",
    resources:
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} make-standin --config {params.config_file} --dataset {wildcards.dataset} {output} > {log} 2>&1"


rule unpack_official:
    input:
        zip=lambda w: config["datasets"][w.dataset]["zip"],
        code=code_deps("unpack-data"),
    output:
        directory("data/official/{dataset}"),
    params:
        megl=MEGL,
    benchmark:
        f"{RESULTS}/benchmarks/data/{{dataset}}_unpack.tsv"
    log:
        f"{RESULTS}/logs/data/{{dataset}}_unpack.log",
    resources:
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} unpack-data {input.zip} {output} > {log} 2>&1"


rule validate_data:
    input:
        data=lambda w: data_root(w.dataset),
        code=code_deps("validate-data"),
    output:
        f"{RESULTS}/data/{{dataset}}/validation.json",
    params:
        megl=MEGL,
    benchmark:
        f"{RESULTS}/benchmarks/data/{{dataset}}_validate.tsv"
    log:
        f"{RESULTS}/logs/data/{{dataset}}_validate.log",
    resources:
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} validate-data {input.data} --summary-json {output} > {log} 2>&1"


rule split:
    input:
        data=lambda w: data_root(w.dataset),
        validated=f"{RESULTS}/data/{{dataset}}/validation.json",
        code=code_deps("split"),
    output:
        f"{RESULTS}/data/{{dataset}}/split.json",
    params:
        megl=MEGL,
        config_file=CONFIG_FILE,
        split=config["split"],  # re-run trigger: what the command reads
    benchmark:
        f"{RESULTS}/benchmarks/data/{{dataset}}_split.tsv"
    log:
        f"{RESULTS}/logs/data/{{dataset}}_split.log",
    resources:
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} split {input.data} --out {output} --config {params.config_file} --dataset {wildcards.dataset} "
        "> {log} 2>&1"

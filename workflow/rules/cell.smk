# Training, prediction and scoring, two jobs per (dataset, backbone, method) cell: run_cell chooses the
# method's guidance weight on the validation split (results/selection/...), then trains every seed and
# predicts with it on the test split, into its own run folder (docs/workflow.md says why one process
# serves a whole cell); score reads those predictions and writes each seed's metrics.json. Only score's
# code inputs hold src/megl/metrics/: editing a metric re-scores, it re-trains nothing.


rule pretrain_backbone:
    input:
        code=code_deps("pretrain-backbone"),
    output:
        weights=f"{RESULTS}/backbones/{{backbone}}.safetensors",
        report=f"{RESULTS}/backbones/{{backbone}}.json",
    params:
        megl=MEGL,
        config_file=CONFIG_FILE,
        settings=lambda w: {"backbone": config["backbones"][w.backbone],
                            "pretrain": section_for_backbone(config["pretrain"], w.backbone)},
    benchmark:
        f"{RESULTS}/benchmarks/backbones/{{backbone}}.tsv"
    log:
        f"{RESULTS}/logs/backbones/{{backbone}}.log",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} pretrain-backbone --config {params.config_file} --backbone {wildcards.backbone} "
        "--out {output.weights} --report {output.report} > {log} 2>&1"


rule cache_features:
    input:
        data=lambda w: data_root(w.dataset),
        split=f"{RESULTS}/data/{{dataset}}/split.json",
        weights=lambda w: backbone_weights(w.backbone),
        code=code_deps("cache-features"),
    output:
        f"{RESULTS}/features/{{dataset}}/{{backbone}}.safetensors",
    params:
        megl=MEGL,
        config_file=CONFIG_FILE,
        weights_arg=lambda w, input: f"--backbone-weights {input.weights}" if input.weights else "",
        settings=lambda w: for_cell(config, w.dataset, w.backbone)["backbones"][w.backbone],
    benchmark:
        f"{RESULTS}/benchmarks/features/{{dataset}}/{{backbone}}.tsv"
    log:
        f"{RESULTS}/logs/features/{{dataset}}/{{backbone}}.log",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} cache-features --config {params.config_file} --data-root {input.data} "
        "--split {input.split} --backbone {wildcards.backbone} --dataset {wildcards.dataset} {params.weights_arg} "
        "--out {output} > {log} 2>&1"


rule run_cell:
    input:
        unpack(cell_inputs),
        code=code_deps("run-cell"),
    output:
        selection=f"{RESULTS}/selection/{{dataset}}/{{backbone}}/{{method}}.json",
        weights=[path for _, path in cell_outputs("model.safetensors")],
        predictions=[path for _, path in cell_outputs("predictions.jsonl")],
        score_inputs=[path for _, path in cell_outputs("score_inputs.npz")],
        run_configs=[path for _, path in cell_outputs("config.yaml")],
    params:
        megl=MEGL,
        config_file=CONFIG_FILE,
        gpu=gpu_prefix,
        runs_root=lambda w: f"{RESULTS}/runs/{w.dataset}/{w.backbone}/{w.method}",
        optional=cell_optional_args,
        run_config=cell_config,  # what this cell's runs read: another method's knob does not re-run it
    benchmark:
        f"{RESULTS}/benchmarks/cells/{{dataset}}/{{backbone}}/{{method}}.tsv"
    log:
        f"{RESULTS}/logs/cells/{{dataset}}/{{backbone}}/{{method}}.log",
    threads: config["train"]["num_threads"]
    resources:
        gpu=GPU_JOB,
        mem_mb=4000,
    conda:
        CONDA_ENV
    shell:
        "{params.gpu} {params.megl} run-cell --config {params.config_file} --dataset {wildcards.dataset} "
        "--backbone {wildcards.backbone} --method {wildcards.method} --runs-root {params.runs_root} "
        "--selection-out {output.selection} --data-root {input.data} --split {input.split} "
        "{params.optional} > {log} 2>&1"


rule score:
    input:
        predictions=[path for _, path in cell_outputs("predictions.jsonl")],
        score_inputs=[path for _, path in cell_outputs("score_inputs.npz")],
        run_configs=[path for _, path in cell_outputs("config.yaml")],
        code=code_deps("score"),
    output:
        metrics=[
            report(
                path,
                category="Runs",
                subcategory="{dataset} / {backbone}",
                labels={"method": "{method}", "seed": str(seed)},
            )
            for seed, path in cell_outputs("metrics.json")
        ],
    params:
        megl=MEGL,
        run_dirs=lambda w: " ".join(f"{RESULTS}/runs/{w.dataset}/{w.backbone}/{w.method}/seed{seed}"
                                    for seed in config["matrix"]["seeds"]),
    benchmark:
        f"{RESULTS}/benchmarks/scores/{{dataset}}/{{backbone}}/{{method}}.tsv"
    log:
        f"{RESULTS}/logs/scores/{{dataset}}/{{backbone}}/{{method}}.log",
    threads: 1
    resources:
        mem_mb=2000,
    conda:
        CONDA_ENV
    shell:
        # stdout (one line: what the cell scored) goes to the terminal, the rest to the log
        "{params.megl} score {params.run_dirs} 2> {log}"

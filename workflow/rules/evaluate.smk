# Scoring of one trained run on the test split (docs/metrics.md).


rule evaluate:
    input:
        weights=f"{RESULTS}/runs/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}/model.safetensors",
        data=lambda w: data_root(w.dataset),
        split=f"{RESULTS}/data/{{dataset}}/split.json",
        encoders=f"{RESULTS}/encoders/{{dataset}}",
    output:
        metrics=report(
            f"{RESULTS}/runs/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}/metrics.json",
            category="Runs",
            subcategory="{dataset} / {backbone}",
            labels={"method": "{method}", "seed": "{seed}"},
        ),
        predictions=f"{RESULTS}/runs/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}/predictions.jsonl",
    params:
        megl=MEGL,
        config_file=CONFIG_FILE,
        run_dir=subpath(input.weights, parent=True),
        gpu=gpu_prefix,
        evaluate=config["evaluate"],
        vision_encoder=config["vision_encoder"],  # CLIPScore's model
    log:
        f"{RESULTS}/logs/evaluate/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}.log",
    threads: config["train"]["num_threads"]
    resources:
        gpu=GPU_JOB,
        mem_mb=4000,
    conda:
        CONDA_ENV
    shell:
        "{params.gpu} {params.megl} evaluate {params.run_dir} --config {params.config_file} "
        "--data-root {input.data} --split {input.split} --pretrained {input.encoders} > {log} 2>&1"

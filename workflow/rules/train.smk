# One training run per (dataset, backbone, method, seed). `--resume` continues a killed run.


rule train:
    input:
        data=lambda w: data_root(w.dataset),
        split=f"{RESULTS}/data/{{dataset}}/split.json",
        encoders=f"{RESULTS}/encoders/{{dataset}}",
    output:
        weights=f"{RESULTS}/runs/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}/model.safetensors",
        # declared so that a re-run (changed params/code) first removes the finished-run marker
        done=f"{RESULTS}/runs/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}/train_done.json",
    params:
        megl=MEGL,
        config_file=CONFIG_FILE,
        run_dir=subpath(output.weights, parent=True),
        gpu=gpu_prefix,
        run_config=training_config,  # only what this run's training reads: other methods' knobs don't re-run it
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}.log",
    threads: config["train"]["num_threads"]
    resources:
        gpu=GPU_JOB,
        mem_mb=4000,
    conda:
        CONDA_ENV
    shell:
        "{params.gpu} {params.megl} train --config {params.config_file} --dataset {wildcards.dataset} "
        "--backbone {wildcards.backbone} --method {wildcards.method} --seed {wildcards.seed} "
        "--data-root {input.data} --split {input.split} --pretrained {input.encoders} "
        "--run-dir {params.run_dir} --resume --no-progress > {log} 2>&1"

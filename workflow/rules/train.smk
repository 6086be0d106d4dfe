# One training run per (dataset, backbone, method, seed). `--resume` continues a killed run.


rule train:
    input:
        data=lambda w: data_root(w.dataset),
        split=f"{RESULTS}/data/{{dataset}}/split.json",
        encoders=f"{RESULTS}/encoders/{{dataset}}",
    output:
        f"{RESULTS}/runs/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}/model.safetensors",
    params:
        config_file=CONFIG_FILE,
        run_dir=subpath(output[0], parent=True),
        gpu=gpu_prefix,
        hyper={k: config[k] for k in ("train", "sdtg", "lm", "vision_encoder")},
        method_cfg=lambda w: config.get("baselines", {}).get(w.method),
        backbone_cfg=lambda w: config["backbones"].get(w.backbone),
    log:
        f"{RESULTS}/logs/train/{{dataset}}/{{backbone}}/{{method}}/seed{{seed}}.log",
    threads: config["train"]["num_threads"]
    resources:
        gpu=GPU_JOB,
        mem_mb=4000,
    shell:
        "{params.gpu} {MEGL} train --config {params.config_file} --dataset {wildcards.dataset} "
        "--backbone {wildcards.backbone} --method {wildcards.method} --seed {wildcards.seed} "
        "--data-root {input.data} --split {input.split} --pretrained {input.encoders} "
        "--run-dir {params.run_dir} --resume --no-progress > {log} 2>&1"

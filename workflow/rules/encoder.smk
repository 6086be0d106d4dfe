# The frozen vision encoder and the LM of SDTG: pretrained here on the training split
# (embedded default: tiny CLIP + tiny Llama); at paper scale they are local checkpoints.


rule pretrain_encoder:
    input:
        data=lambda w: data_root(w.dataset),
        split=f"{RESULTS}/data/{{dataset}}/split.json",
        code=code_deps("pretrain-encoder"),
    output:
        directory(f"{RESULTS}/encoders/{{dataset}}"),
    params:
        megl=MEGL,
        config_file=CONFIG_FILE,
        text_models={"vision_encoder": config["vision_encoder"], "lm": config["lm"]},
    benchmark:
        f"{RESULTS}/benchmarks/encoders/{{dataset}}.tsv"
    log:
        f"{RESULTS}/logs/encoders/{{dataset}}.log",
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        CONDA_ENV
    shell:
        "{params.megl} pretrain-encoder --config {params.config_file} --data-root {input.data} "
        "--split {input.split} --out {output} > {log} 2>&1"

"""`megl` command line: one subcommand per workflow step; each rule of the DAG calls one of these.

Imports are deferred into the handlers so that `megl --help` and light commands start fast.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megl.errors import DataError, MEGLError


def _config(args) -> dict:
    from megl.config import load_config

    overrides = {}
    for item in getattr(args, "set", None) or []:
        key, _, raw = item.partition("=")
        import yaml

        value = yaml.safe_load(raw)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string; a number was meant
            try:
                value = float(value)
            except ValueError:
                pass
        overrides[key] = value
    return load_config(args.config, overrides)


def cmd_validate_data(args) -> int:
    from megl.data.validate import format_summary, validate

    problems, summary = validate(Path(args.dir))
    if problems:
        for line in problems:
            print(line, file=sys.stderr)
        print(f"{args.dir}: {len(problems)} problem(s); the data were not modified", file=sys.stderr)
        return 2
    print(format_summary(summary))
    if args.summary_json:
        from megl.io import write_json

        write_json(args.summary_json, summary)
    return 0


def cmd_make_standin(args) -> int:
    from megl.data.standin import make_standin

    fractions = {"train": args.train, "val": args.val, "test": args.test}
    info = make_standin(
        args.kind, Path(args.out), seed=args.seed, n_images=args.n_images, image_size=args.image_size,
        annotated_fraction=args.annotated_fraction, shortcut_strength=args.shortcut_strength,
        split_seed=args.split_seed, split_fractions=fractions, overwrite=args.overwrite,
    )
    print(f"wrote {args.kind} stand-in to {args.out}: {info.get('n_images', args.n_images)} images")
    return 0


def cmd_split(args) -> int:
    from megl.data.annotations import read_dataset
    from megl.data.split import write_split

    fractions = {"train": args.train, "val": args.val, "test": args.test}
    split = write_split(read_dataset(Path(args.dir)), Path(args.out), args.seed, fractions)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(split[k])}" for k in ("train", "val", "test")))
    return 0


def cmd_methods(args) -> int:
    from megl.methods import describe

    print(describe())
    return 0


def cmd_pretrain_encoder(args) -> int:
    from megl.train import pretrain_for_dataset

    pretrain_for_dataset(_config(args), Path(args.data_root), Path(args.split), Path(args.out))
    return 0


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def cmd_train(args) -> int:
    from megl.train import train_run

    train_run(_config(args), dataset=args.dataset, backbone=args.backbone, method=args.method,
              seed=args.seed, run_dir=Path(args.run_dir), data_root=Path(args.data_root),
              split_path=Path(args.split), pretrained_dir=_path(args.pretrained),
              backbone_weights=_path(args.backbone_weights), resume=args.resume, force=args.force)
    return 0


def cmd_evaluate(args) -> int:
    from megl.evaluate import evaluate_run

    evaluate_run(_config(args), Path(args.run_dir), data_root=Path(args.data_root), split_path=Path(args.split),
                 pretrained_dir=_path(args.pretrained), backbone_weights=_path(args.backbone_weights))
    return 0


def cmd_pretrain_backbone(args) -> int:
    from megl.backbone_pretrain import pretrain_backbone

    config = _config(args)
    if args.backbone not in config["backbones"]:
        raise MEGLError(f"unknown backbone {args.backbone!r}; valid backbones: {', '.join(config['backbones'])}")
    torch_threads(config)
    from megl.train import resolve_device

    pretrain_backbone(config["backbones"][args.backbone], config["pretrain"], Path(args.out),
                      _path(args.report), resolve_device(config["device"]))
    return 0


def cmd_cache_features(args) -> int:
    from megl.features import cache_features

    cache_features(_config(args), dataset_root=Path(args.data_root), split_path=Path(args.split),
                   backbone=args.backbone, backbone_weights=_path(args.backbone_weights), out=Path(args.out))
    return 0


def cmd_run_cell(args) -> int:
    from megl.cell import run_cell

    config = _config(args)
    run_cell(config, dataset=args.dataset, backbone=args.backbone, method=args.method,
             seeds=args.seeds or list(config["matrix"]["seeds"]), runs_root=Path(args.runs_root),
             selection_out=Path(args.selection_out), data_root=Path(args.data_root), split_path=Path(args.split),
             cache_path=_path(args.cache), pretrained_dir=_path(args.pretrained),
             backbone_weights=_path(args.backbone_weights))
    return 0


def torch_threads(config: dict) -> None:
    import torch

    torch.set_num_threads(int(config["train"]["num_threads"]))


def cmd_gpu_run(args) -> int:
    from megl.gpu_slots import main as gpu_main

    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    options = (["--n-gpus", str(args.n_gpus)] if args.n_gpus is not None else []) + (
        ["--lock-dir", args.lock_dir] if args.lock_dir else [])
    return gpu_main([*options, "--", *cmd])


def cmd_unpack_data(args) -> int:
    from megl.data.fetch import unpack_official

    print(unpack_official(Path(args.zip), Path(args.out)))
    return 0


def cmd_fetch_data(args) -> int:
    from megl.data.fetch import fetch_official

    print(fetch_official(args.dataset, Path(args.dest)))
    return 0


def cmd_tables(args) -> int:
    from megl.report.build import build_tables

    paths = build_tables(_config(args), Path(args.results), Path(args.out), Path(args.published), args.alpha)
    print(f"wrote {len(paths)} table files to {args.out}")
    return 0


def cmd_figures(args) -> int:
    from megl.report.build import build_figures

    paths = build_figures(_config(args), Path(args.results), Path(args.out), args.alpha)
    print(f"wrote {len(paths)} figure files to {args.out}")
    return 0


def cmd_paper(args) -> int:
    from megl.report.build import build_pdf, copy_for_paper

    copy_for_paper(Path(args.tables), Path(args.figures), Path(args.out))
    return build_pdf(Path(args.out).parent) if args.pdf else 0


def cmd_summarize(args) -> int:
    from megl.report.summary import write_summary

    paths = write_summary(_config(args), Path(args.results), Path(args.out))
    print(f"wrote {len(paths)} summary files to {args.out}")
    return 0


def cmd_compare(args) -> int:
    from megl.io import write_text
    from megl.report.summary import compare_markdown, compare_summaries, read_summary

    table = compare_summaries(read_summary(args.reference), read_summary(args.summary))
    text = compare_markdown(table)
    print(text, end="")
    if args.out:
        write_text(Path(args.out), text)
    bad = table["status"].isin(["differs", "missing in new"]).any()
    return 1 if args.strict and bad else 0


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config/config.yaml", help="workflow config (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, dotted (e.g. train.epochs=1); repeatable")


def _add_backbone_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone-weights", help="pretrained trunk file (the pretrain-backbone step's output); "
                                              "overrides backbones.<name>.weights")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="megl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate-data", help="check a dataset in the official ME format")
    p.add_argument("dir")
    p.add_argument("--summary-json", help="also write the summary here")
    p.set_defaults(func=cmd_validate_data)

    p = sub.add_parser("make-standin", help="generate an offline stand-in dataset in the ME format")
    p.add_argument("kind", choices=["objects", "actions", "digits"])
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-images", type=int, default=1200, help="digits: at most 1797 (the UCI scans)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--annotated-fraction", type=float, default=0.1)
    p.add_argument("--shortcut-strength", type=float, default=0.9,
                   help="P(a training image carries its class's shortcut mark); 0 disables")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--train", type=float, default=0.7)
    p.add_argument("--val", type=float, default=0.1)
    p.add_argument("--test", type=float, default=0.2)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_make_standin)

    p = sub.add_parser("split", help="seeded per-image stratified train/val/test split")
    p.add_argument("dir")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train", type=float, default=0.7)
    p.add_argument("--val", type=float, default=0.1)
    p.add_argument("--test", type=float, default=0.2)
    p.set_defaults(func=cmd_split)

    p = sub.add_parser("methods", help="print the method registry")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("pretrain-encoder", help="train the tokenizer, tiny CLIP and tiny LM (embedded default)")
    _add_config(p)
    p.add_argument("--data-root", required=True, help="dataset folder in the official ME format")
    p.add_argument("--split", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_pretrain_encoder)

    p = sub.add_parser("train", help="train one run (dataset, backbone, method, seed)")
    _add_config(p)
    for name in ("dataset", "backbone", "method"):
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--data-root", required=True, help="dataset folder in the official ME format")
    p.add_argument("--split", required=True)
    p.add_argument("--pretrained", help="folder of the pretrained text models (tiny encoder/LM)")
    _add_backbone_weights(p)
    p.add_argument("--run-dir", required=True, help="folder the run's files are written to")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite a finished run")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a trained run on the test split: metrics.json")
    _add_config(p)
    p.add_argument("run_dir")
    p.add_argument("--data-root", required=True, help="dataset folder in the official ME format")
    p.add_argument("--split", required=True)
    p.add_argument("--pretrained", help="folder of the pretrained text models (tiny encoder/LM)")
    _add_backbone_weights(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("pretrain-backbone", help="pretrain one small backbone on the source stand-in task")
    _add_config(p)
    p.add_argument("--backbone", required=True, help="key of config backbones (e.g. resnet18)")
    p.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--report", help="also write the pretraining report (JSON) here")
    p.set_defaults(func=cmd_pretrain_backbone)

    p = sub.add_parser("cache-features", help="decode a dataset once and cache the frozen trunk's features")
    _add_config(p)
    p.add_argument("--data-root", required=True, help="dataset folder in the official ME format")
    p.add_argument("--split", required=True, help="split file (megl split)")
    p.add_argument("--backbone", required=True, help="key of config backbones")
    _add_backbone_weights(p)
    p.add_argument("--out", required=True, help="cache file to write (.safetensors)")
    p.set_defaults(func=cmd_cache_features)

    p = sub.add_parser("run-cell", help="select the guidance weight on val, then train and evaluate every seed")
    _add_config(p)
    for name in ("dataset", "backbone", "method"):
        p.add_argument(f"--{name}", required=True, help=f"the cell's {name}")
    p.add_argument("--seeds", type=int, nargs="*", help="seeds to run (default: matrix.seeds)")
    p.add_argument("--runs-root", required=True, help="folder of the cell's runs (seed<N>/ below it)")
    p.add_argument("--selection-out", required=True, help="where the selection record (JSON) is written")
    p.add_argument("--data-root", required=True, help="dataset folder in the official ME format")
    p.add_argument("--split", required=True, help="split file (megl split)")
    p.add_argument("--cache", help="feature cache of this dataset and backbone (megl cache-features)")
    p.add_argument("--pretrained", help="folder of the pretrained text models (tiny encoder/LM)")
    _add_backbone_weights(p)
    p.set_defaults(func=cmd_run_cell)

    p = sub.add_parser("tables", help="tables 2-5, paper-vs-ours and claims from every run's metrics")
    _add_config(p)
    p.add_argument("--results", default="results", help="results root holding runs/ (default: %(default)s)")
    p.add_argument("--out", default="results/tables")
    p.add_argument("--published", default="config/published.yaml")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the claims' paired tests")
    p.set_defaults(func=cmd_tables)

    p = sub.add_parser("figures", help="seaborn figures (PNG + PDF) from every run")
    _add_config(p)
    p.add_argument("--results", default="results")
    p.add_argument("--out", default="figures")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the forest plot's verdicts")
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("paper", help="copy tables and figures into paper/generated; build the PDF with --pdf")
    p.add_argument("--tables", default="results/tables")
    p.add_argument("--figures", default="figures")
    p.add_argument("--out", default="paper/generated")
    p.add_argument("--pdf", action="store_true", help="run latexmk when it is installed")
    p.set_defaults(func=cmd_paper)

    p = sub.add_parser("unpack-data", help="unpack an official ME zip (DVC-tracked) into a dataset folder")
    p.add_argument("zip")
    p.add_argument("out")
    p.set_defaults(func=cmd_unpack_data)

    p = sub.add_parser("gpu-run", help="run a command holding one GPU slot (flock)")
    p.add_argument("--n-gpus", type=int, default=None)
    p.add_argument("--lock-dir")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_gpu_run)

    p = sub.add_parser("fetch-data", help="download the official ME zip (needs a network)")
    p.add_argument("dataset", choices=["objects", "actions"])
    p.add_argument("--dest", default="data/raw")
    p.set_defaults(func=cmd_fetch_data)

    p = sub.add_parser("summarize", help="headline metrics over seeds: one JSON per dataset × backbone "
                                         "and a flat summary.csv (DVC metrics)")
    _add_config(p)
    p.add_argument("--results", default="results", help="results root holding runs/ (default: %(default)s)")
    p.add_argument("--out", required=True, help="folder for {dataset}_{backbone}.json and summary.csv")
    p.set_defaults(func=cmd_summarize)

    p = sub.add_parser("compare", help="compare a summary.csv with a reference summary.csv, cell by cell")
    p.add_argument("--reference", required=True, help="the reference summary.csv (e.g. a committed run)")
    p.add_argument("--summary", required=True, help="the new summary.csv to check against the reference")
    p.add_argument("--out", help="also write the Markdown table to this file")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any cell differs (|z| >= 2) or is missing in the new summary")
    p.set_defaults(func=cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except DataError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except MEGLError as exc:
        print(f"megl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

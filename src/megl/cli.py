"""`megl` command line: one subcommand per workflow step; each rule of the DAG calls one of these.

Imports are deferred into the handlers so that `megl --help` and light commands start fast.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megl.dataset_kinds import OFFICIAL_ZIPS, STANDIN_KINDS
from megl.errors import EXIT_FAILURE, DataError, MEGLError


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


# The stand-in knobs and their defaults when given as flags (`make-standin KIND OUT`); a workflow step
# names the dataset instead (`--dataset NAME`) and the knobs come from the config's datasets.NAME.standin.
STANDIN_DEFAULTS = {"seed": 0, "n_images": 1200, "image_size": 64, "annotated_fraction": 0.1, "shortcut_strength": 0.9,
                    "class_name_fraction": 0.2}  # = megl.data.standin.CLASS_NAME_FRACTION (tested)
SPLIT_DEFAULTS = {"seed": 0, "train": 0.7, "val": 0.1, "test": 0.2}


def _given(args, names) -> dict:
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def _from_config_or_flags(args, flags: dict, command: str) -> dict | None:
    """The config (with --dataset) or None (flags): refuses a mix, whose winner would be a guess."""
    if not args.dataset:
        if args.set:
            raise MEGLError(f"{command}: --set changes the config, which only --dataset reads")
        return None
    if flags:
        raise MEGLError(f"{command} --dataset reads its settings from {args.config}; drop "
                        + ", ".join("KIND" if k == "kind" else "--" + k.replace("_", "-") for k in flags))
    config = _config(args)
    if args.dataset not in config["datasets"]:
        raise MEGLError(f"{args.config}: datasets: no dataset {args.dataset!r} (has {', '.join(config['datasets'])})")
    return config


def cmd_make_standin(args) -> int:
    from megl.data.standin import make_standin

    flags = _given(args, ["kind", *STANDIN_DEFAULTS, "split_seed", "train", "val", "test"])
    config = _from_config_or_flags(args, flags, "make-standin")
    if config is not None:
        spec = config["datasets"][args.dataset]
        if spec.get("source") != "standin":
            raise MEGLError(f"{args.config}: datasets.{args.dataset}.source is {spec.get('source')!r}, not standin")
        knobs = dict(spec["standin"])
        kind, split = knobs.pop("kind"), config["split"]
    else:
        if not args.kind:
            raise MEGLError("make-standin: give a KIND (objects, actions, digits) or --dataset NAME")
        kind, knobs = args.kind, {**STANDIN_DEFAULTS, **_given(args, STANDIN_DEFAULTS)}
        split = {**SPLIT_DEFAULTS, **_given(args, ["train", "val", "test"]),
                 "seed": flags.get("split_seed", SPLIT_DEFAULTS["seed"])}
    info = make_standin(
        kind, Path(args.out), seed=knobs["seed"], n_images=knobs["n_images"], image_size=knobs["image_size"],
        annotated_fraction=knobs["annotated_fraction"], shortcut_strength=knobs["shortcut_strength"],
        split_seed=split["seed"], split_fractions={k: split[k] for k in ("train", "val", "test")},
        overwrite=args.overwrite, class_name_fraction=knobs["class_name_fraction"],
    )
    shares = ", ".join(f"{k} {v['share']}" for k, v in info["rationales_naming_class"].items()
                       if v["share"] is not None)
    print(f"wrote {kind} stand-in to {args.out}: {info.get('n_images', knobs['n_images'])} images; "
          f"share of rationale sentences naming the class: {shares}")
    return 0


def cmd_split(args) -> int:
    from megl.data.annotations import read_dataset
    from megl.data.split import write_split

    config = _from_config_or_flags(args, _given(args, SPLIT_DEFAULTS), "split")
    split = config["split"] if config is not None else {**SPLIT_DEFAULTS, **_given(args, SPLIT_DEFAULTS)}
    fractions = {k: split[k] for k in ("train", "val", "test")}
    written = write_split(read_dataset(Path(args.dir)), Path(args.out), split["seed"], fractions)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {len(written[k])}" for k in ("train", "val", "test")))
    return 0


def cmd_methods(args) -> int:
    from megl.methods import describe

    print(describe())
    return 0


def cmd_pretrain_encoder(args) -> int:
    from megl.pretrain import pretrain_for_dataset

    pretrain_for_dataset(_config(args), Path(args.data_root), Path(args.split), Path(args.out))
    return 0


def _path(value: str | None) -> Path | None:
    return Path(value) if value else None


def cmd_train(args) -> int:
    from megl.rundir import CKPT_META
    from megl.runlock import run_folder_lock
    from megl.train import train_run

    config = _config(args)
    with run_folder_lock(args.run_dir, "train", keep_if=CKPT_META):
        train_run(config, dataset=args.dataset, backbone=args.backbone, method=args.method,
                  seed=args.seed, run_dir=Path(args.run_dir), data_root=Path(args.data_root),
                  split_path=Path(args.split), pretrained_dir=_path(args.pretrained),
                  backbone_weights=_path(args.backbone_weights), resume=args.resume, force=args.force)
    return 0


def cmd_evaluate(args) -> int:
    from megl.evaluate import evaluate_run
    from megl.runlock import run_folder_lock

    config = _config(args)
    if not Path(args.run_dir).is_dir():
        raise MEGLError(f"{args.run_dir}: no such run folder; train it first (megl train)")
    with run_folder_lock(args.run_dir, "evaluate"):
        evaluate_run(config, Path(args.run_dir), data_root=Path(args.data_root), split_path=Path(args.split),
                     pretrained_dir=_path(args.pretrained), backbone_weights=_path(args.backbone_weights))
    return 0


def cmd_pretrain_backbone(args) -> int:
    from megl.backbone_pretrain import pretrain_backbone

    config = _config(args)
    if args.backbone not in config["backbones"]:
        raise MEGLError(f"unknown backbone {args.backbone!r}; valid backbones: {', '.join(config['backbones'])}")
    torch_threads(config)
    from megl.config import section_for_backbone
    from megl.runtime import resolve_device

    pretrain_backbone(config["backbones"][args.backbone], section_for_backbone(config["pretrain"], args.backbone),
                      Path(args.out), _path(args.report), resolve_device(config["device"]))
    return 0


def cmd_cache_features(args) -> int:
    from megl.features import cache_features

    cache_features(_config(args), dataset_root=Path(args.data_root), split_path=Path(args.split),
                   backbone=args.backbone, backbone_weights=_path(args.backbone_weights), out=Path(args.out),
                   dataset=args.dataset)
    return 0


def cmd_run_cell(args) -> int:
    from megl.cell import run_cell
    from megl.runlock import run_folders_lock

    config = _config(args)
    seeds = args.seeds or list(config["matrix"]["seeds"])
    with run_folders_lock([Path(args.runs_root) / f"seed{seed}" for seed in seeds], "run-cell"):
        run_cell(config, dataset=args.dataset, backbone=args.backbone, method=args.method,
                 seeds=seeds, runs_root=Path(args.runs_root),
                 selection_out=Path(args.selection_out), data_root=Path(args.data_root), split_path=Path(args.split),
                 cache_path=_path(args.cache), pretrained_dir=_path(args.pretrained),
                 backbone_weights=_path(args.backbone_weights))
    return 0


def cmd_score(args) -> int:
    from megl.runlock import run_folders_lock
    from megl.score import cell_line, score_runs, write_cell_scores

    run_dirs = [Path(d) for d in args.run_dirs]
    if args.runs_root:
        if not args.seeds and not args.config:
            raise MEGLError("score: --runs-root needs --seeds or --config (its matrix.seeds)")
        seeds = args.seeds or list(_config(args)["matrix"]["seeds"])
        run_dirs += [Path(args.runs_root) / f"seed{seed}" for seed in seeds]
    if not run_dirs:
        raise MEGLError("score: name the run folders, or --runs-root with --seeds or --config")
    with run_folders_lock(run_dirs, "score"):
        metrics = score_runs(run_dirs)
    line = cell_line(list(metrics.values()))
    if args.cell_out:
        write_cell_scores(Path(args.cell_out), line, metrics)
    print(line, flush=True)  # stdout: the terminal's one line per cell (the log has the rest)
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

    config = _config(args)
    paths = build_tables(config, _results(args, config), Path(args.out), Path(args.published), args.alpha)
    print(f"wrote {len(paths)} table files to {args.out}")
    return 0


def cmd_figures(args) -> int:
    from megl.report.build import build_figures

    config = _config(args)
    out = Path(args.out) if args.out else _results(args, config) / "figures"
    paths = build_figures(config, _results(args, config), out, args.alpha,
                          Path(args.pdf_out) if args.pdf_out else None)
    print(f"wrote {len(paths)} figure files to {out}")
    return 0


def cmd_paper(args) -> int:
    from megl.report.build import build_pdf, copy_for_paper

    copy_for_paper(Path(args.tables), Path(args.figures), Path(args.out), args.config_file)
    return build_pdf(Path(args.out).parent) if args.pdf else 0


def cmd_summarize(args) -> int:
    from megl.report.summary import write_summary

    config = _config(args)
    paths = write_summary(config, _results(args, config), Path(args.out), Path(args.plots) if args.plots else None,
                          Path(args.summary_csv) if args.summary_csv else None,
                          Path(args.headline) if args.headline else None)
    print(f"wrote {len(paths)} summary files to {args.out}" + (f" and {args.plots}" if args.plots else ""))
    return 0


def cmd_compare(args) -> int:
    from megl.io import write_text
    from megl.report.summary import compare_markdown, compare_summaries, read_summary

    reference, summary = read_summary(args.reference), read_summary(args.summary)
    table = compare_summaries(reference, summary)
    text = compare_markdown(table)
    print(text, end="")
    if args.out:
        write_text(Path(args.out), text)
    if not args.strict:
        return 0
    if reference.empty:  # a check against nothing would pass anything
        print(f"megl compare: --strict: {args.reference}: the reference has no cell", file=sys.stderr)
        return 1
    if not table["status"].isin(["agrees", "differs"]).any():
        print(f"megl compare: --strict: {args.summary} shares no cell with {args.reference}", file=sys.stderr)
        return 1
    return 1 if table["status"].isin(["differs", "missing in new"]).any() else 0


def cmd_preflight(args) -> int:
    from megl.io import write_json
    from megl.preflight import preflight

    report = preflight(_config(args), pdf=args.pdf)
    found = ", ".join(f"{tool}: {report[tool]}" for tool in ("java", "latexmk") if tool in report)
    print(f"preflight ok ({found or 'no external tool needed'})")
    if args.out:
        write_json(args.out, report)
    return 0


def cmd_plan(args) -> int:
    from megl.io import write_json
    from megl.plan import format_plan, plan

    report = plan(_config(args))
    print(format_plan(report))
    if args.json:
        write_json(Path(args.json), report)
    return 0


def cmd_code_deps(args) -> int:
    from megl.codedeps import code_deps, command_handlers, update_dvc_yaml

    if args.dvc_yaml:
        path = Path(args.dvc_yaml)
        text = path.read_text(encoding="utf-8")
        fresh = update_dvc_yaml(text)
        if fresh == text:
            print(f"{path}: the code deps are up to date")
            return 0
        if not args.write:
            print(f"{path}: the code deps are out of date; run megl code-deps --dvc-yaml {path} --write",
                  file=sys.stderr)
            return 1
        from megl.io import write_text

        write_text(path, fresh)
        print(f"{path}: code deps updated")
        return 0
    commands = args.commands or sorted(command_handlers())
    try:
        deps = {name: code_deps(name) for name in commands}
    except KeyError as exc:
        raise MEGLError(exc.args[0]) from None
    for name, files in deps.items():
        if len(commands) > 1:
            print(f"{name}:")
        print("\n".join(("  " if len(commands) > 1 else "") + f for f in files))
    return 0


def cmd_dvc_pipeline(args) -> int:
    from megl.dvc_pipeline import write_pipeline

    out = write_pipeline(args.configfile, name=args.name, dvc_yaml=args.dvc_yaml)
    print(f"wrote {out}; run it with: dvc repro {out}")
    return 0


def cmd_dvc_matrix(args) -> int:
    from megl.config import load_config
    from megl.dvc_pipeline import MATRIX_VARS, matrix_vars_text
    from megl.io import write_text

    text = matrix_vars_text(load_config(args.config), args.config)
    if args.write:
        write_text(Path(MATRIX_VARS), text)
        print(f"wrote {MATRIX_VARS}")
    else:
        sys.stdout.write(text)
    return 0


EPILOG = """exit status:
  0  success
  1  runtime failure: a tool that is not installed, a failed download or build, a check
     that found a difference (compare --strict), a fault of the machine (disk full, no
     permission, a corrupt archive: one line naming the file), or an unexpected error (with
     its traceback)
  2  usage or bad input: a bad argument, config, dataset, name or file (e.g. a truncated
     model.safetensors), or a refused operation (e.g. a finished run without --force)

Run `megl COMMAND --help` for the arguments of one command."""


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="config/config.yaml", help="workflow config (default: %(default)s)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key, dotted (e.g. train.epochs=1); repeatable")


def _add_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("--results", help="results root holding runs/ (default: the config's results_dir, "
                                     f"else {DEFAULT_RESULTS})")


def _results(args, config: dict) -> Path:
    """--results, else the config's results_dir (the workflow's RESULTS), else results/."""
    return Path(args.results or config.get("results_dir", DEFAULT_RESULTS))


def _add_cell(p: argparse.ArgumentParser) -> None:
    """--dataset, --backbone, --method: which cell of the run matrix (train and run-cell)."""
    p.add_argument("--dataset", required=True, help="key of config datasets (e.g. objects)")
    p.add_argument("--backbone", required=True, help="key of config backbones (e.g. resnet18; mllm for MLLM methods)")
    p.add_argument("--method", required=True, help="method name (megl methods lists them)")


def _add_pretrained(p: argparse.ArgumentParser) -> None:
    """--pretrained (the text models) and --backbone-weights: what train, evaluate and run-cell start from."""
    p.add_argument("--pretrained", help=PRETRAINED_HELP)
    _add_backbone_weights(p)


def _add_backbone_weights(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone-weights", help="pretrained trunk file (the pretrain-backbone step's output); "
                                              "overrides backbones.<name>.weights")


def _add_fractions(p: argparse.ArgumentParser) -> None:
    for name in ("train", "val", "test"):
        p.add_argument(f"--{name}", type=float,
                       help=f"fraction of the images in the {name} split (default: {SPLIT_DEFAULTS[name]})")


def _add_data(p: argparse.ArgumentParser, split_help: str = "split file (megl split)") -> None:
    p.add_argument("--data-root", required=True, help="dataset folder in the official ME format")
    p.add_argument("--split", required=True, help=split_help)


DEFAULT_RESULTS = "results"  # as workflow/rules/common.smk: config.get("results_dir", "results")
PRETRAINED_HELP = "folder of the pretrained text models (megl pretrain-encoder); needed by text-writing methods"


def build_parser() -> argparse.ArgumentParser:
    from megl import __version__

    parser = argparse.ArgumentParser(prog="megl", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _parser_validate_data(sub)
    _parser_make_standin(sub)
    _parser_split(sub)
    _parser_methods(sub)
    _parser_preflight(sub)
    _parser_pretrain_encoder(sub)
    _parser_train(sub)
    _parser_evaluate(sub)
    _parser_pretrain_backbone(sub)
    _parser_cache_features(sub)
    _parser_run_cell(sub)
    _parser_score(sub)
    _parser_tables(sub)
    _parser_figures(sub)
    _parser_paper(sub)
    _parser_unpack_data(sub)
    _parser_gpu_run(sub)
    _parser_fetch_data(sub)
    _parser_summarize(sub)
    _parser_code_deps(sub)
    _parser_dvc_pipeline(sub)
    _parser_dvc_matrix(sub)
    _parser_compare(sub)
    _parser_plan(sub)
    return parser


def _command(sub, name: str, help_text: str) -> argparse.ArgumentParser:
    """One sub-command: its one-line help doubles as its description (the exit codes: `megl --help` only)."""
    return sub.add_parser(name, help=help_text, description=help_text,
                          formatter_class=argparse.RawDescriptionHelpFormatter)


# ------------------------------------------------------------------ one parser per command
def _parser_validate_data(sub) -> None:
    p = _command(sub, "validate-data", "check a dataset in the official ME format")
    p.add_argument("dir", help="dataset folder (exp_annotation.json, images/, maps); never modified")
    p.add_argument("--summary-json", help="also write the summary here")
    p.set_defaults(func=cmd_validate_data)


def _add_dataset_settings(p: argparse.ArgumentParser, what: str) -> None:
    """--dataset NAME: the settings come from the config (how workflow steps call it), not from flags."""
    _add_config(p)
    p.add_argument("--dataset", help=f"read {what} from the config's entry for this dataset (the workflow's "
                                     "way; then give none of the flags below)")


def _parser_make_standin(sub) -> None:
    p = _command(sub, "make-standin", "generate an offline stand-in dataset in the ME format")
    p.add_argument("kind", nargs="?", choices=list(STANDIN_KINDS),
                   help="which stand-in generator (not with --dataset)")
    p.add_argument("out", help="folder to write the dataset to")
    _add_dataset_settings(p, "the kind and knobs (datasets.NAME.standin) and the split")
    d = STANDIN_DEFAULTS
    p.add_argument("--seed", type=int, help=f"generator seed (default: {d['seed']})")
    p.add_argument("--n-images", type=int,
                   help=f"number of images (default: {d['n_images']}); digits: at most 1797 (the UCI scans)")
    p.add_argument("--image-size", type=int, help=f"image side in pixels (default: {d['image_size']})")
    p.add_argument("--annotated-fraction", type=float,
                   help="share of samples whose map is listed in exp_annotation.json "
                        f"(default: {d['annotated_fraction']})")
    p.add_argument("--shortcut-strength", type=float,
                   help="P(a training image carries its class's shortcut mark); 0 disables "
                        f"(default: {d['shortcut_strength']})")
    p.add_argument("--class-name-fraction", type=float,
                   help="share of rationale sentences that name the class (docs/data.md; "
                        f"default: {d['class_name_fraction']})")
    p.add_argument("--split-seed", type=int,
                   help=f"seed of the split the shortcut is planted on (default: {SPLIT_DEFAULTS['seed']})")
    _add_fractions(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in OUT")
    p.set_defaults(func=cmd_make_standin)


def _parser_split(sub) -> None:
    p = _command(sub, "split", "seeded per-image stratified train/val/test split")
    p.add_argument("dir", help="dataset folder in the official ME format")
    p.add_argument("--out", required=True, help="split file to write (JSON)")
    _add_dataset_settings(p, "the split (the config's split: block)")
    p.add_argument("--seed", type=int, help=f"split seed (default: {SPLIT_DEFAULTS['seed']})")
    _add_fractions(p)
    p.set_defaults(func=cmd_split)


def _parser_methods(sub) -> None:
    p = _command(sub, "methods", "print the method registry")
    p.set_defaults(func=cmd_methods)


def _parser_preflight(sub) -> None:
    p = _command(sub, "preflight", "check the external tools the workflow needs (Java; latexmk with --pdf)")
    _add_config(p)
    p.add_argument("--pdf", action="store_true", help="the manuscript PDF is asked for: check latexmk too")
    p.add_argument("--out", help="also write what was found (JSON) here")
    p.set_defaults(func=cmd_preflight)


def _parser_pretrain_encoder(sub) -> None:
    p = _command(sub, "pretrain-encoder", "train the tokenizer, tiny CLIP and tiny LM (embedded default)")
    _add_config(p)
    _add_data(p)
    p.add_argument("--out", required=True, help="folder to write the text models to")
    p.set_defaults(func=cmd_pretrain_encoder)


def _parser_train(sub) -> None:
    p = _command(sub, "train", "train one run (dataset, backbone, method, seed)")
    _add_config(p)
    _add_cell(p)
    p.add_argument("--seed", type=int, required=True, help="training seed")
    _add_data(p)
    _add_pretrained(p)
    p.add_argument("--run-dir", required=True, help="folder the run's files are written to")
    p.add_argument("--resume", action="store_true", help="continue from the last epoch checkpoint")
    p.add_argument("--force", action="store_true",
                   help="train from scratch, replacing a finished run or an unreadable checkpoint")
    p.set_defaults(func=cmd_train)


def _parser_evaluate(sub) -> None:
    p = _command(sub, "evaluate",
                 "predict with a trained run on the test split, then score it (its own config.yaml): metrics.json")
    _add_config(p)
    p.add_argument("run_dir", help="the run's folder (model.safetensors, run.json from megl train)")
    _add_data(p)
    _add_pretrained(p)
    p.set_defaults(func=cmd_evaluate)


def _parser_pretrain_backbone(sub) -> None:
    p = _command(sub, "pretrain-backbone", "pretrain one small backbone on the source stand-in task")
    _add_config(p)
    p.add_argument("--backbone", required=True, help="key of config backbones (e.g. resnet18)")
    p.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    p.add_argument("--report", help="also write the pretraining report (JSON) here")
    p.set_defaults(func=cmd_pretrain_backbone)


def _parser_cache_features(sub) -> None:
    p = _command(sub, "cache-features", "decode a dataset once and cache the frozen trunk's features")
    _add_config(p)
    _add_data(p)
    p.add_argument("--backbone", required=True, help="key of config backbones")
    p.add_argument("--dataset", help="key of config datasets: applies its trunk depth (datasets.<d>.frozen_stages)")
    _add_backbone_weights(p)
    p.add_argument("--out", required=True, help="cache file to write (.safetensors)")
    p.set_defaults(func=cmd_cache_features)


def _parser_run_cell(sub) -> None:
    p = _command(sub, "run-cell",
                 "select the guidance weight on val, then train every seed and predict on test (megl score scores)")
    _add_config(p)
    _add_cell(p)
    p.add_argument("--seeds", type=int, nargs="*", help="seeds to run (default: matrix.seeds)")
    p.add_argument("--runs-root", required=True, help="folder of the cell's runs (seed<N>/ below it)")
    p.add_argument("--selection-out", required=True, help="where the selection record (JSON) is written")
    _add_data(p)
    p.add_argument("--cache", help="feature cache of this dataset and backbone (megl cache-features)")
    _add_pretrained(p)
    p.set_defaults(func=cmd_run_cell)


def _parser_score(sub) -> None:
    p = _command(sub, "score", "score predicted runs (one cell's seeds): each run's metrics.json")
    p.add_argument("run_dirs", nargs="*", help="run folders (predictions.jsonl, score_inputs.npz, config.yaml); "
                   "their text is scored in one METEOR call")
    p.add_argument("--runs-root",
                   help="a cell's folder: score its seed<N>/ folders (--seeds, or the config's matrix.seeds)")
    p.add_argument("--seeds", type=int, nargs="*", help="seeds below --runs-root")
    p.add_argument("--config", help="config whose matrix.seeds --runs-root scores (nothing else is read from it)")
    p.add_argument("--cell-out", help="also write the cell's scores here (JSON: its line and every run's metrics)")
    p.set_defaults(func=cmd_score, set=None)


def _parser_tables(sub) -> None:
    p = _command(sub, "tables", "tables 2-5, paper-vs-ours and claims from every run's metrics")
    _add_config(p)
    _add_results(p)
    p.add_argument("--out", default="results/tables", help="folder for the .csv/.md/.tex tables (default: %(default)s)")
    p.add_argument("--published", default="config/published.yaml",
                   help="the paper's published numbers (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level of the claims' paired tests (default: %(default)s)")
    p.set_defaults(func=cmd_tables)


def _parser_figures(sub) -> None:
    p = _command(sub, "figures", "seaborn figures (PNG + PDF) from every run")
    _add_config(p)
    _add_results(p)
    p.add_argument("--out", default=None, help="folder for the figures (default: <results>/figures)")
    p.add_argument("--alpha", type=float, default=0.05,
                   help="significance level of the forest plot's verdicts (default: %(default)s)")
    p.add_argument("--pdf-out", default=None,
                   help="folder for the PDF versions (default: beside the PNGs in --out)")
    p.set_defaults(func=cmd_figures)


def _parser_paper(sub) -> None:
    p = _command(sub, "paper", "copy tables and figures into paper/generated; build the PDF with --pdf")
    p.add_argument("--tables", default="results/tables", help="folder of the tables' .tex (default: %(default)s)")
    p.add_argument("--figures", default="results/figures", help="folder of the figures' .pdf (default: %(default)s)")
    p.add_argument("--out", default="paper/generated", help="the manuscript's input folder (default: %(default)s)")
    p.add_argument("--pdf", action="store_true", help="run latexmk when it is installed")
    p.add_argument("--config-file", action="append", default=None,
                   help="the config file the results came from, as the manuscript names it (repeatable)")
    p.set_defaults(func=cmd_paper)


def _parser_unpack_data(sub) -> None:
    p = _command(sub, "unpack-data", "unpack an official ME zip (DVC-tracked) into a dataset folder")
    p.add_argument("zip", help="the zip (e.g. data/raw/Object_Classification.zip)")
    p.add_argument("out", help="folder to unpack into (left alone when it already holds the dataset)")
    p.set_defaults(func=cmd_unpack_data)


def _parser_gpu_run(sub) -> None:
    p = _command(sub, "gpu-run", "run a command holding one GPU slot (flock)")
    p.add_argument("--n-gpus", type=int, default=None,
                   help="GPU slots on this node (default $MEGL_N_GPUS, else 0 = no locking)")
    p.add_argument("--lock-dir", help="folder of the per-GPU lock files (default $MEGL_GPU_LOCK_DIR, "
                                      "else /tmp/megl-gpu-locks-$USER)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command to run, after --")
    p.set_defaults(func=cmd_gpu_run)


def _parser_fetch_data(sub) -> None:
    p = _command(sub, "fetch-data", "download the official ME zip with gdown (needs a network)")
    p.add_argument("dataset", choices=list(OFFICIAL_ZIPS),
                   help="objects: Object_Classification.zip; actions: Action_Classification.zip")
    p.add_argument("--dest", default="data/raw", help="folder to put the zip in (default: %(default)s)")
    p.set_defaults(func=cmd_fetch_data)


def _parser_summarize(sub) -> None:
    p = _command(sub, "summarize", "headline metrics over seeds: one JSON per dataset × backbone "
                             "and a flat summary.csv (DVC metrics)")
    _add_config(p)
    _add_results(p)
    p.add_argument("--out", required=True, help="folder for {dataset}_{backbone}.json and summary.csv")
    p.add_argument("--plots", default=None,
                   help="folder for the DVC plot data: loss/, accuracy/, miou/{dataset}_{backbone}.csv")
    p.add_argument("--summary-csv", default=None,
                   help="where the flat summary CSV goes (default: OUT/summary.csv); "
                        "DVC keeps it out of its metrics folder")
    p.add_argument("--headline", default=None,
                   help="folder for {dataset}_{backbone}_{method}.json: mean accuracy and mIoU "
                        "(what `dvc metrics show` prints)")
    p.set_defaults(func=cmd_summarize)


def _parser_code_deps(sub) -> None:
    p = _command(sub, "code-deps",
                 "the package files a megl command imports or reads (its workflow step's code inputs)")
    p.add_argument("commands", nargs="*", metavar="COMMAND", help="megl commands (default: every command)")
    p.add_argument("--dvc-yaml", help="instead: check the generated code deps of this dvc.yaml (exit 1 if stale)")
    p.add_argument("--write", action="store_true", help="with --dvc-yaml: rewrite its stale code deps in place")
    p.set_defaults(func=cmd_code_deps)


def _parser_dvc_pipeline(sub) -> None:
    p = _command(sub, "dvc-pipeline",
                 "write pipelines/<name>/dvc.yaml: the DVC pipeline of dvc.yaml for another config file")
    p.add_argument("--configfile", required=True,
                   help="the whole config file (e.g. config/smoke.yaml, config/paper.yaml)")
    p.add_argument("--name", help="the pipeline's folder name (default: the config file's stem)")
    p.add_argument("--dvc-yaml", default="dvc.yaml", help="the pipeline to derive from (default: %(default)s)")
    p.set_defaults(func=cmd_dvc_pipeline)


def _parser_dvc_matrix(sub) -> None:
    p = _command(sub, "dvc-matrix", "print (or --write) config/dvc_matrix.yaml: the root dvc.yaml's run-matrix lists")
    p.add_argument("--config", default="config/config.yaml", help="the root pipeline's config (default: %(default)s)")
    p.add_argument("--write", action="store_true", help="write config/dvc_matrix.yaml instead of printing it")
    p.set_defaults(func=cmd_dvc_matrix)


def _parser_compare(sub) -> None:
    p = _command(sub, "compare", "compare a summary.csv with a reference summary.csv, cell by cell")
    p.add_argument("--reference", required=True, help="the reference summary.csv (e.g. a committed run)")
    p.add_argument("--summary", required=True, help="the new summary.csv to check against the reference")
    p.add_argument("--out", help="also write the Markdown table to this file")
    p.add_argument("--strict", action="store_true",
                   help="exit 1 when any cell differs (|z| >= 2) or is missing in the new summary, or when the "
                        "reference is empty or shares no cell with the summary")
    p.set_defaults(func=cmd_compare)


def _parser_plan(sub) -> None:
    p = _command(sub, "plan", "size every job of the matrix on the meta device: parameters, memory, steps (no GPU, "
                              "no download)")
    _add_config(p)
    p.add_argument("--json", help="also write the plan here (JSON)")
    p.set_defaults(func=cmd_plan)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except DataError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return exc.exit_code
    except MEGLError as exc:
        print(f"megl {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # a fault of the world (disk full, permission, I/O error): one line, exit 1
        print(f"megl {args.command}: error: {os_error_line(exc)}", file=sys.stderr)
        return EXIT_FAILURE


def os_error_line(exc: OSError) -> str:
    """`FILE: cause` of an OSError (both files of a rename), else its text."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    files = [f for f in (exc.filename, exc.filename2) if f is not None]
    return f"{' -> '.join(map(str, files))}: {cause}" if files else f"{type(exc).__name__}: {cause}"


if __name__ == "__main__":
    sys.exit(main())

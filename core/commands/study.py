"""``python -m core study run|list|status|table|report``: comparison studies (see core/study.py)."""

from __future__ import annotations

import argparse
import shlex
import sys

from core.commands._executor import add_executor_options, ray_options, run_study_on_ray
from core.config import LOSSES, PRECISIONS

#: Shared-setting options: (flag, RunConfig field, type, help).
SHARED_OPTIONS: tuple[tuple[str, str, type, str], ...] = (
    ("--epochs", "epochs", int, "epochs per run (default preset: 10; paper preset: 50, a guess); with --patience "
                                "the most a run trains"),
    ("--patience", "early_stopping_patience", int,
     "stop a run after N epochs without an improvement of the validation pixel F1 (default: train every epoch)"),
    ("--min-epochs", "early_stopping_min_epochs", int, "with --patience: never stop a run before epoch N"),
    ("--steps-per-epoch", "steps_per_epoch", int, "optimiser steps per epoch (default 25)"),
    ("--batch-size", "batch_size", int, "patches per step (default 8)"),
    ("--patch-size", "patch_size", int, "training patch side in pixels (default 256)"),
    ("--width", "base_width", int, "channels of the first U-Net level (default preset 16, paper 64)"),
    ("--depth", "depth", int, "number of poolings (default 4)"),
    ("--lr", "learning_rate", float, "Adam learning rate (default 1e-3)"),
    ("--validation-fraction", "validation_fraction", float, "share kept for validation (default 0.2)"),
    ("--tile-size", "tile_size", int, "validation / prediction tile (default 512)"),
    ("--threads", "threads", int, "torch CPU threads per run (default: torch's choice)"),
    ("--split-strategy", "split_strategy", str,
     "auto (default: a contiguous block with a gap on image stacks, whole groups with --group-pattern, else "
     "random), random, block or groups"),
    ("--group-pattern", "group_pattern", str,
     "regular expression on file stems naming each image's group (e.g. '^(slide\\d+)_'); "
     "no group is split between training and validation"),
    ("--target", "target", str, "mask (default) or mask+contour (outlines too, for seeded-watershed)"),
    ("--lr-schedule", "lr_schedule", str, "constant (default), cosine, warmup-cosine, one-cycle or poly"),
    ("--border-weight", "border_weight", float, "the original U-Net's weight map's w0 (0 = off, the paper: 10)"),
    ("--touching-weight", "touching_weight", float, "weight added where two objects touch with no gap (0 = off)"),
    ("--foreground-sampling", "foreground_sampling", float, "share of patches centred on a foreground pixel"),
    ("--normalization", "normalization", str, "none (default) or percentile (per image)"),
    ("--colour", "colour", str, "keep (default), grey or grey-dark-background"),
    ("--ema-decay", "ema_decay", float, "keep a moving average of the weights with this decay per step (0 = off)"),
    ("--best-by", "best_by", str, "val_f1 (default), val_f1_negative or val_dsb_map: the validation score that picks best.pt"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study", help="comparison studies: a grid of runs, queued, tabulated and reported",
        description="A study is a named grid: datasets x train fractions x augmentation levels x seeds, "
                    "with shared training settings. Its runs go through the same queue as the app's.",
    )
    commands = parser.add_subparsers(dest="study_command", metavar="SUBCOMMAND", required=True)

    run = commands.add_parser(
        "run", help="queue a study's runs (skipping finished ones) and follow them",
        description="Queue the runs of a study grid and wait for them with a progress bar and an ETA. Runs "
                    "already finished and evaluated are skipped, failed or cancelled ones resumed. Without "
                    "--datasets the stored study is resumed; with it, the grid is added to the study.",
    )
    run.add_argument("--name", required=True, help="study name (letters, digits, '.', '_', '-')")
    run.add_argument("--datasets", help="comma-separated dataset names, e.g. isbi2012,dsb2018")
    run.add_argument("--roots", help="comma-separated dataset=folder pairs, e.g. isbi2012=../shared/data/isbi2012")
    run.add_argument("--fractions", help="train fractions (default 0.1,0.2,0.5,0.8)")
    run.add_argument("--budgets", help="training budgets in optimiser steps per run, e.g. 300,900: each sets the "
                                       "runs' epochs to budget / steps per epoch (a grid axis, like --fractions; "
                                       "instead of --epochs)")
    run.add_argument("--init-from", help="starting weights, a grid axis: 'none' (from scratch), run ids or a "
                                         "shipped model's name, e.g. none,starter-nuclei compares from scratch "
                                         "with fine-tuned (width, depth and target must match the weights)")
    run.add_argument("--augmentations", help="augmentation levels (default none,light,heavy)")
    run.add_argument("--seeds", help="seeds, e.g. 0,1,2 or 0-2 (default 0)")
    run.add_argument("--preset", choices=["default", "paper"],
                     help="default: fastest good settings on this hardware (width 16, bf16 autocast where "
                          "available, 25 steps/epoch); paper: BCE, Adam, width 64, 50 epochs (a guess). "
                          "Both resize to the paper's image sizes (DSB 128, EM 512)")
    for flag, dest, kind, text in SHARED_OPTIONS:
        run.add_argument(flag, dest=dest, type=kind, help=text)
    run.add_argument("--image-size", type=int, help="resize every image to N x N (0 = native size); "
                                                    "default: the paper's size per dataset")
    run.add_argument("--loss", choices=LOSSES)
    run.add_argument("--precision", choices=PRECISIONS)
    run.add_argument("--max-parallel", type=int, help="runs trained at once (default: 1 on the CPU, 1 per GPU)")
    run.add_argument("--no-wait", dest="wait", action="store_false", help="queue and return at once")
    add_executor_options(run)
    run.add_argument("--poll", type=float, default=1.0, help=argparse.SUPPRESS)
    run.set_defaults(handler=run_study)

    listing = commands.add_parser("list", help="the studies, with their run counts")
    listing.set_defaults(handler=list_studies)

    status = commands.add_parser("status", help="a study's runs and where each stands")
    status.add_argument("name")
    status.set_defaults(handler=show_status)

    table = commands.add_parser("table", help="the tidy results table: one row per run")
    table.add_argument("name")
    table.add_argument("--csv", nargs="?", const="-", metavar="FILE",
                       help="every column as CSV: printed, or written to FILE")
    table.add_argument("--method", default="components", help="post-processing method of the instance scores")
    table.set_defaults(handler=show_table)

    report = commands.add_parser("report", help="write the HTML report and the Markdown summary")
    report.add_argument("name")
    report.add_argument("--out", required=True, help="folder for report.html, summary.md and image strips")
    report.add_argument("--fraction", type=float, help="train fraction of the Table 1 comparison (default: smallest)")
    report.add_argument("--level", help="augmentation level of the Table 1 comparison (default: none)")
    report.add_argument("--method", default="components", help="post-processing method of the instance scores")
    report.set_defaults(handler=write_report)


def grid_from_args(args: argparse.Namespace):
    """The StudyGrid the arguments describe (not yet validated)."""
    from core.study import (StudyGrid, parse_augmentations, parse_budgets, parse_fractions, parse_init_from,
                            parse_list, parse_roots, parse_seeds)

    grid = StudyGrid(datasets=parse_list(args.datasets, "--datasets"), roots=parse_roots(args.roots),
                     preset=args.preset or "default")
    if args.fractions:
        grid.fractions = parse_fractions(args.fractions)
    if args.budgets:
        grid.budgets = parse_budgets(args.budgets)
    if args.augmentations:
        grid.augmentations = parse_augmentations(args.augmentations)
    if args.seeds:
        grid.seeds = parse_seeds(args.seeds)
    if args.init_from:
        grid.init_from = parse_init_from(args.init_from)
    overrides = {dest: getattr(args, dest) for _, dest, _, _ in SHARED_OPTIONS if getattr(args, dest) is not None}
    for dest in ("loss", "precision"):
        if getattr(args, dest) is not None:
            overrides[dest] = getattr(args, dest)
    if args.image_size is not None:
        overrides["image_size"] = args.image_size or None
    grid.overrides = overrides
    grid.command = "python -m core " + shlex.join(sys.argv[1:])
    return grid


def run_study(args: argparse.Namespace) -> int:
    from core import queue
    from core.errors import UNetLabError
    from core.runs import Registry
    from core.study import (StudyDefinition, check_study_name, follow, launch, load_study, machine_info,
                            plan_study, save_study, validate_grid)

    name = check_study_name(args.name)
    registry = Registry()
    definition = load_study(name, registry)
    grid_options = ("roots", "fractions", "budgets", "augmentations", "seeds", "preset", "image_size", "loss", "precision",
                    *(dest for _, dest, _, _ in SHARED_OPTIONS))
    if args.datasets:
        grid = validate_grid(grid_from_args(args))
        grid.machine = machine_info()
        definition = definition or StudyDefinition(name=name)
        added = definition.add_grid(grid)
        save_study(definition, registry)
        print(f"study {name}: {'grid added' if added else 'same grid as before'}; "
              f"definition in {registry.path.parent / 'studies' / (name + '.json')}")
    elif any(getattr(args, option) is not None for option in grid_options):
        raise UNetLabError("give --datasets with the grid options (or none of them to resume the stored study)")
    elif definition is None:
        raise UNetLabError(f"no stored study {name!r}; define it with --datasets (and --fractions, "
                           "--augmentations, --seeds ...)")

    plan = plan_study(definition, registry)
    counts = {action: sum(item.action == action for item in plan)
              for action in ("queue", "resume", "evaluate", "wait", "skip")}
    if ray_options(args) is not None:  # --executor ray: this process trains the plan's runs as Ray tasks
        return run_study_on_ray(args, name, plan, registry, counts)
    run_ids = launch(plan, registry, max_parallel=args.max_parallel)
    print(f"study {name}: {len(plan)} runs: {counts['queue']} queued, {counts['resume']} resumed, "
          f"{counts['evaluate']} queued to be evaluated, {counts['wait']} already queued or running, "
          f"{counts['skip']} finished (skipped)", flush=True)
    if not args.wait:
        print(f"not waiting; follow with `python -m core study status {name}`")
        return 0
    try:
        progress = follow(run_ids, registry, poll_seconds=args.poll, max_parallel=args.max_parallel)
    except KeyboardInterrupt:
        alive = "is" if queue.worker_running(registry) else "was"
        print(f"\nstopped waiting. The worker {alive} still training the queued runs in the background; "
              f"follow with `python -m core study status {name}`, wait again with "
              f"`python -m core study run --name {name}`, cancel a run with `python -m core cancel RUN_ID`.")
        return 130
    from core.tables import format_duration

    print(f"study {name}: {progress.finished} finished, {progress.failed} failed, {progress.cancelled} cancelled"
          + (f"; mean run time {format_duration(progress.mean_run_seconds)}" if progress.mean_run_seconds else ""))
    if progress.failed or progress.cancelled:
        print(f"rerun `python -m core study run --name {name}` to resume the stopped runs "
              f"(`python -m core study status {name}` shows their errors)")
        return 1
    return 0


def list_studies(args: argparse.Namespace) -> int:
    from core.runs import Registry
    from core.study import load_study, study_names

    registry = Registry()
    registry.reap_dead()
    names = study_names(registry)
    if not names:
        print("no studies yet")
        return 0
    print(f"{'study':<32} {'grids':>5} {'runs':>5} {'finished':>8} {'running':>7} {'queued':>6} {'stopped':>7}")
    for name in names:
        definition = load_study(name, registry)
        runs = registry.list_runs(study=name)
        count = lambda *statuses: sum(run.status in statuses for run in runs)  # noqa: E731
        grids = str(len(definition.grids)) if definition else "app"
        print(f"{name:<32} {grids:>5} {len(runs):>5} {count('finished'):>8} {count('running'):>7} "
              f"{count('queued'):>6} {count('failed', 'cancelled'):>7}")
    if any(load_study(name, registry) is None for name in names):
        print("(grids 'app': launched from the Train page, no stored definition)")
    return 0


def show_status(args: argparse.Namespace) -> int:
    from core.errors import UNetLabError
    from core.runs import Registry
    from core.study import load_study, plan_study, study_progress, study_records
    from core.tables import format_duration, progress_view

    registry = Registry()
    definition = load_study(args.name, registry)
    records = study_records(args.name, registry)
    if definition is None and not records:
        raise UNetLabError(f"no study {args.name!r}: no stored definition and no runs")
    if definition is not None:
        missing = [item for item in plan_study(definition, registry) if item.action == "queue"]
        for grid in definition.grids:
            print(f"grid: {grid.command or '(no command recorded)'}")
        if missing:
            print(f"{len(missing)} cell(s) not queued yet: " + "; ".join(i.config.label() for i in missing[:8])
                  + (" ..." if len(missing) > 8 else ""))
    progress = study_progress([record.id for record in records], registry)
    print(f"{progress.total} runs: {progress.finished} finished, {progress.running} running, {progress.queued} queued, "
          f"{progress.failed} failed, {progress.cancelled} cancelled; ETA {format_duration(progress.eta_seconds)}")
    for record in records:
        evaluated = registry.get_evaluation(record.id, "val") is not None
        view = progress_view(record.status, record.progress, record.error)
        suffix = " (evaluated)" if evaluated else ""
        print(f"  {record.id:<44} {record.config.label():<34} {view.text}{suffix}")
    return 0


def show_table(args: argparse.Namespace) -> int:
    from core.runs import Registry
    from core.study import study_table

    table = study_table(args.name, Registry(), method=args.method)
    if args.csv == "-":
        sys.stdout.write(table.to_csv(index=False))
        return 0
    if args.csv:
        from pathlib import Path

        from core.errors import UNetLabError
        from core.fileio import atomic_path

        path = Path(args.csv).expanduser()
        if not path.parent.is_dir():
            raise UNetLabError(f"--csv {args.csv}: no such folder {path.parent}")
        with atomic_path(path) as temporary:
            table.to_csv(temporary, index=False)
        print(f"{len(table)} runs, {len(table.columns)} columns: {path}")
        return 0
    from core.metrics import METRIC_NAMES
    from core.tables import instance_column

    shown = ["Run", "Dataset", "Status", "Train fraction", "Augmentation", "Seed", "Setting",
             next(c for c in table.columns if c.startswith("Pixel F1 (Dice)")),
             instance_column("dsb_map", args.method), instance_column("ap50", args.method),
             METRIC_NAMES["roc_auc"]]
    with __import__("pandas").option_context("display.width", 250, "display.max_columns", 20,
                                             "display.float_format", "{:.4f}".format):
        print(table[shown].to_string(index=False))
    print(f"({len(table.columns)} columns in all: add --csv for every config field and metric)")
    return 0


def write_report(args: argparse.Namespace) -> int:
    from core.report import build_report
    from core.runs import Registry

    files = build_report(args.name, args.out, Registry(), method=args.method, fraction=args.fraction,
                         level=args.level)
    print(f"report: {files.html}\nsummary: {files.markdown}\ntable: {files.table}")
    for path in files.images:
        print(f"image strip: {path}")
    return 0

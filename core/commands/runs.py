"""``python -m core runs list|show|check``: what the run registry holds, and whether it is sound."""

from __future__ import annotations

import argparse
import json
import time

# Kept in step with core.runs.STATUSES (not imported: `--help` stays free of numpy).
STATUSES = ("queued", "running", "evaluating", "finished", "failed", "cancelled")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("runs", help="list and inspect training runs")
    commands = parser.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", required=True)
    listing = commands.add_parser("list", help="one line per run, newest first")
    listing.add_argument("--status", choices=STATUSES)
    listing.add_argument("--dataset")
    listing.add_argument("--study")
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=list_runs)
    show = commands.add_parser("show", help="a run's config, status and per-epoch metrics")
    show.add_argument("run_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=show_run)
    check = commands.add_parser(
        "check", help="check the registry: SQLite integrity, unreadable rows, missing checkpoints",
        description="Check the run registry without changing it. Prints one line per problem, then a "
                    "one-line verdict; exit status 0 when it is sound, 2 when it is damaged.",
    )
    check.set_defaults(handler=check_registry)


def list_runs(args: argparse.Namespace) -> int:
    from core.runs import Registry

    registry = Registry()
    registry.reap_dead()
    runs = registry.list_runs(status=args.status, dataset=args.dataset, study=args.study)
    if args.json:
        rows = []
        for run in runs:
            epochs = registry.epochs(run.id)
            last = epochs[-1] if epochs and epochs[-1]["epoch"] > 0 else {}
            rows.append({**run.to_dict(), "last_epoch": last.get("epoch"), "val_f1": last.get("val_f1")})
        print(json.dumps(rows))
        return 0
    if not runs:
        filters = [f"{name} {value}" for name, value in (("status", args.status), ("dataset", args.dataset),
                                                           ("study", args.study)) if value is not None]
        if filters and registry.list_runs():
            print(f"no run matches {' and '.join(filters)} (the registry {registry.path} holds "
                  f"{len(registry.list_runs())} run(s); `unetlab runs list` shows them all)")
        else:
            print(f"no runs yet in the registry {registry.path}")
        return 0
    print(f"{'run id':<44} {'status':<10} {'dataset':<22} {'train':>6} {'aug':<7} {'seed':>4} {'epoch':>7} {'val F1':>7}")
    for run in runs:
        epochs = registry.epochs(run.id)
        last = epochs[-1] if epochs else {}
        f1 = f"{last['val_f1']:.4f}" if last.get("epoch", 0) > 0 else "-"
        epoch = f"{last.get('epoch', 0)}/{run.config.epochs}"
        print(f"{run.id:<44} {run.status:<10} {run.config.dataset:<22} {run.config.train_fraction:>6.0%} "
              f"{run.config.augmentation:<7} {run.config.seed:>4} {epoch:>7} {f1:>7}")
    return 0


def show_run(args: argparse.Namespace) -> int:
    from core.runs import Registry

    registry = Registry()
    registry.reap_dead()
    run = registry.get_run(args.run_id)
    epochs = registry.epochs(run.id)
    evaluation = registry.get_evaluation(run.id, "val")
    if args.json:
        print(json.dumps({**run.to_dict(), "epochs": epochs, "evaluation": evaluation}))
        return 0
    print(f"run {run.id}: {run.status}")
    when = lambda t: time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"  # noqa: E731
    print(f"created {when(run.created)}  started {when(run.started)}  finished {when(run.finished)}")
    if run.error:
        print(f"error: {run.error.splitlines()[0]}")
    print("config: " + json.dumps(run.config.to_dict(), sort_keys=True))
    print(f"{'epoch':>5} {'train loss':>10} {'val loss':>9} {'val F1':>7} {'val P':>7} {'val R':>7}")
    for row in epochs:
        print(f"{row['epoch']:>5} {row.get('train_loss', float('nan')):>10.4f} {row['val_loss']:>9.4f} "
              f"{row['val_f1']:>7.4f} {row['val_precision']:>7.4f} {row['val_recall']:>7.4f}")
    print("(epoch 0 = the untrained model; validation pixel scores at threshold "
          f"{run.config.threshold}, micro-averaged over the validation images)")
    return 0


def check_registry(args: argparse.Namespace) -> int:
    from core.runs import Registry

    report = Registry.check()
    for line in report.details():
        print(line)
    print(report.verdict())
    return 0 if report.ok else 2

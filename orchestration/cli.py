"""The `clinfuse` command line (../shared/cli-and-report.md): generate, run, demo, promote,
config, ui."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _generate(args: argparse.Namespace) -> int:
    from clinfuse.synthetic import generate

    summary = generate(
        Path(args.out),
        admissions=args.admissions,
        seed=args.seed,
        messy=args.messy,
        image_size=args.image_size,
        progress=True,
        task=args.task,
        labs_per_admission=args.labs_per_admission,
    )
    print(f"wrote {args.out} ({summary.get('seconds', 0):.1f} s); truth in {summary['truth_dir']}")
    return 0


def _task_name(name: str) -> str:
    """argparse type of generate --task: a built-in task, else the error naming them."""
    from clinfuse.synthetic.tasks import get_task

    try:
        return get_task(name).name
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _run(args: argparse.Namespace) -> int:
    from clinfuse.orchestration.runner import PipelineFailed, run_pipeline

    try:
        report = run_pipeline(
            Path(args.landing),
            Path(args.workdir),
            Path(args.config) if args.config else None,
            workers=args.workers,
            assignments=args.set,
        )
    except PipelineFailed as failure:
        print(f"clinfuse run failed: {failure}", file=sys.stderr)
        return 1
    print(f"report: {Path(args.workdir).resolve() / 'report.json'}")
    fusion = report["metrics"].get("fusion") or {}
    if fusion.get("auroc") is not None:
        print(f"fusion test AUROC {fusion['auroc']:.3f}")
    return 0


def _promote(args: argparse.Namespace) -> int:
    from clinfuse.orchestration.runner import PipelineFailed, promote_model

    try:
        outcome = promote_model(
            Path(args.landing),
            Path(args.workdir),
            force=args.force,
            note=args.note or "",
            config=Path(args.config) if args.config else None,
            assignments=args.set,
        )
    except PipelineFailed as failure:
        print(f"clinfuse promote failed: {failure}", file=sys.stderr)
        return 1
    decision = outcome["decision"]
    verdict = "promoted" if decision["promoted"] else "refused"
    print(f"{outcome['model_name']} v{outcome['version']}: {verdict} ({decision['reason']})")
    print(f"aliases: {outcome['aliases']}")
    return 0


def _config(args: argparse.Namespace) -> int:
    """Prints the settings a run with this --config and --set would use, every key shown."""
    import yaml

    from clinfuse.assets.settings import to_dict
    from clinfuse.orchestration.runner import PipelineFailed, read_config

    try:
        settings = read_config(Path(args.config) if args.config else None, None, args.set)
    except PipelineFailed as failure:
        print(f"clinfuse config failed: {failure}", file=sys.stderr)
        return 1
    print(yaml.safe_dump(to_dict(settings), sort_keys=False), end="")
    return 0


def _settings_arguments(command: argparse.ArgumentParser) -> None:
    """--config and --set: every key of the run schema (assets/settings.py), as YAML or inline."""
    command.add_argument("--config", help="YAML of run settings (`clinfuse config` lists keys)")
    command.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one setting, e.g. --set window_hours=12 --set training.epochs=5",
    )


def _ui(args: argparse.Namespace) -> int:
    from clinfuse.orchestration.ui import serve_both

    return serve_both(Path(args.workdir), Path(args.landing) if args.landing else None)


def _demo(args: argparse.Namespace) -> int:
    from clinfuse.orchestration.demo import run_demo

    readme = Path(args.readme) if args.readme else None
    return run_demo(Path(args.workdir), admissions=args.admissions, seed=args.seed, readme=readme)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="clinfuse", description=__doc__)
    commands = top.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="write a synthetic landing zone")
    gen.add_argument("--out", required=True)
    gen.add_argument("--admissions", type=int, default=300)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--messy", action="store_true", help="plant bad inputs of every kind")
    gen.add_argument("--image-size", type=int, default=128)
    gen.add_argument(
        "--task",
        default="pneumonia",
        type=_task_name,
        help="the prediction task and where its signal lies (docs/synthetic.md)",
    )
    gen.add_argument(
        "--labs-per-admission",
        type=int,
        default=0,
        metavar="N",
        help="top every admission up to ~N lab rows of label-free filler (benchmarks); 0: none",
    )
    gen.set_defaults(handler=_generate)

    run = commands.add_parser("run", help="materialize every asset on a landing zone")
    run.add_argument("--landing", required=True)
    run.add_argument("--workdir", required=True)
    _settings_arguments(run)
    run.add_argument("--workers", type=int, default=0, help="processes; 0 = all cores")
    run.set_defaults(handler=_run)

    promote = commands.add_parser("promote", help="challenger vs champion: move the alias?")
    promote.add_argument("--landing", required=True)
    promote.add_argument("--workdir", required=True)
    promote.add_argument("--force", action="store_true", help="promote even if the gate refuses")
    promote.add_argument("--note", help="who forces and why (recorded on the version)")
    _settings_arguments(promote)
    promote.set_defaults(handler=_promote)

    config = commands.add_parser("config", help="print the run settings, every key, as YAML")
    _settings_arguments(config)
    config.set_defaults(handler=_config)

    ui = commands.add_parser("ui", help="the Dagster and MLflow web UIs on loopback ports")
    ui.add_argument("--workdir", default="work/demo/run")
    ui.add_argument("--landing", help="default: <workdir>/../landing")
    ui.set_defaults(handler=_ui)

    demo = commands.add_parser("demo", help="generate + run with embedded defaults")
    demo.add_argument("--workdir", default="work/demo")
    demo.add_argument("--admissions", type=int, default=1000)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--readme", help="write the printed results into this README's demo block")
    demo.set_defaults(handler=_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

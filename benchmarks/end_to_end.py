"""`clinfuse run` end to end: wall time and peak memory per stage, at a given cohort size.

    .venv/bin/python benchmarks/end_to_end.py --admissions 1000 [--landing DIR] [--keep DIR]
    .venv/bin/python benchmarks/end_to_end.py --admissions 10000 --set training.epochs=3

Generates a landing zone (or takes --landing), runs the pipeline as `clinfuse run` does (record
the delivery, its partition, everything downstream) with default settings, and prints, for every
step of the Dagster runs, its wall seconds (from the run's own STEP_START / STEP_SUCCESS events)
and the peak resident memory of this process and all its children while it ran (benchmarks/
memory.py samples it twice a second), resident and private (memory-mapped shards count in the
first, not the second: see memory.py). The ratio printed is the run's peak against the peak of
the plainest stage, reading the patients table: how much more than "Python + Dagster + pandas"
the heavy stages hold. Run it at several sizes: flat peaks mean memory does not grow with N.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from memory import TreeSampler  # noqa: E402

from clinfuse.orchestration.runner import dagster_instance, run_pipeline  # noqa: E402
from clinfuse.synthetic import generate  # noqa: E402


def step_spans(workdir: Path) -> list[dict]:
    """(run, step, start, end) of every step of every run on the work dir's instance."""
    import dagster as dg

    spans = []
    with dagster_instance(workdir) as instance:
        for run in reversed(instance.get_runs()):
            starts, ends = {}, {}
            for entry in instance.all_logs(run.run_id):
                if entry.dagster_event_type == dg.DagsterEventType.STEP_START:
                    starts[entry.step_key] = entry.timestamp
                elif entry.dagster_event_type == dg.DagsterEventType.STEP_SUCCESS:
                    ends[entry.step_key] = entry.timestamp
            for step, start in starts.items():
                spans.append(
                    {"job": run.job_name, "step": step, "start": start, "end": ends.get(step)}
                )
    return spans


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=1000)
    parser.add_argument("--landing", type=Path)
    parser.add_argument("--keep", type=Path, help="work directory to keep (default: temporary)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run setting, as `clinfuse run --set` (e.g. training.epochs=3 for a memory run)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clinfuse-e2e-") as scratch:
        landing = args.landing
        generated = None
        if landing is None:
            landing = Path(scratch) / "landing"
            started = time.perf_counter()
            generate(landing, admissions=args.admissions, seed=args.seed)
            generated = time.perf_counter() - started
        workdir = args.keep or Path(scratch) / "work"
        started = time.perf_counter()
        with TreeSampler() as sampler:
            report = run_pipeline(landing, workdir, assignments=args.assignments)
        wall = time.perf_counter() - started
        rows = []
        for span in step_spans(workdir):
            end = span["end"] or time.time()
            rows.append(
                {
                    **span,
                    "seconds": round(end - span["start"], 1),
                    "peak_mib": round(sampler.peak_between(span["start"], end)),
                    "private_peak_mib": round(
                        sampler.peak_between(span["start"], end, private=True)
                    ),
                }
            )
    baseline = next((r["peak_mib"] for r in rows if r["step"] == "patients"), 0) or 1
    summary = {
        "admissions": args.admissions,
        "settings": args.assignments,
        "generate_s": None if generated is None else round(generated, 1),
        "run_wall_s": round(wall, 1),
        "peak_mib": round(sampler.peak_mib),
        "private_peak_mib": round(sampler.private_peak_mib),
        "peak_ratio_to_patients_stage": round(sampler.peak_mib / baseline, 2),
        "decoded": {m: report["inputs"][m]["decoded"] for m in ("dicom", "audio")},
        "auroc_fusion": report["metrics"].get("fusion", {}).get("auroc"),
    }
    print(json.dumps({"summary": summary, "steps": rows}, indent=1))
    print(
        f"\n| step | s | peak MiB | private peak MiB |  ({args.admissions} admissions)"
        "\n|---|---|---|---|"
    )
    for row in sorted(rows, key=lambda r: -r["seconds"])[:14]:
        print(
            f"| {row['step']} | {row['seconds']} | {row['peak_mib']} | {row['private_peak_mib']} |"
        )
    print(
        f"\nrun {summary['run_wall_s']} s, peak {summary['peak_mib']} MiB "
        f"(private {summary['private_peak_mib']} MiB) "
        f"(x{summary['peak_ratio_to_patients_stage']} the patients stage's)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

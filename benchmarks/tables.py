"""Tables out of core: labevents through ingest, the window and the lab features, at scale.

Writes a landing zone whose labevents holds --lab-rows rows (`generate(labs_per_admission=...)`,
label-free filler on top of the rendered labs; or takes --landing), then runs the code the
assets call, stage by stage, in this process: the labevents ingest (DuckDB tokenizing,
stream_labevents), the input accounting's independent row count, the cohort's has_ehr (as the
cohort asset computes it today, and as window_lab_admissions does in DuckDB), window_labs
(write_window_labs), lab_featurizer (fit on train), lab_features (transform) and the blocking
window check on window_labs. Each stage prints its wall time, CPU time and peak RSS (this
process and its children, sampled every 50 ms), and two plain baselines run on the same file in
the same process: a pandas.read_csv chunked loop (dtype=str, 500,000 rows a chunk, what the
ingest did before) and DuckDB's `count(*)` over read_csv.

    .venv/bin/python benchmarks/tables.py --lab-rows 5000000 [--admissions 1000] [--keep DIR]
    .venv/bin/python benchmarks/tables.py --landing DIR [--pandas-ingest] [--no-check]

--pandas-ingest also runs the ingest with pandas tokenizing (use_engine=False), the path every
file took before, and --dataframe-features the window and the lab features as DataFrames in
memory, as the assets computed them before; --threads sets DuckDB's threads (default: the
machine's cores, as a run with `workers: 0` gets). The machine is shared: the load average is
printed before and after.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
from memory import tree_rss_mib

from clinfuse.assets.checks import expectations
from clinfuse.assets.checks.asset_checks import window_lab_times
from clinfuse.assets.cohort.assets import build_cohort
from clinfuse.assets.cohort.availability import modality_availability
from clinfuse.assets.cohort.window import (
    read_window_labs,
    window_lab_admissions,
    write_window_labs,
)
from clinfuse.assets.features.labs import LabFeaturizer
from clinfuse.assets.ingest.counting import count_data_rows
from clinfuse.assets.ingest.ehr import reader as er
from clinfuse.assets.ingest.ehr.engine import EngineConfig, connect, quote_literal
from clinfuse.assets.settings import Settings
from clinfuse.synthetic import generate


class Peak:
    """Peak RSS of this process and its descendants, sampled on a thread."""

    def __init__(self, every: float = 0.05) -> None:
        self.every, self.peak_kib = every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        self.peak_kib = _tree_rss_kib()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_kib = max(self.peak_kib, _tree_rss_kib())
            self._stop.wait(self.every)


def _tree_rss_kib() -> int:
    return round(tree_rss_mib() * 1024)


class Stages:
    def __init__(self) -> None:
        self.peak = Peak()
        self.rows: list[dict] = []

    def run(self, name: str, work):
        self.peak.reset()
        start_kib = self.peak.peak_kib
        wall, cpu = time.perf_counter(), time.process_time()
        value = work()
        row = {
            "stage": name,
            "wall_s": round(time.perf_counter() - wall, 1),
            "cpu_s": round(time.process_time() - cpu, 1),
            "peak_rss_mib": round(self.peak.peak_kib / 1024),
            "start_rss_mib": round(start_kib / 1024),
        }
        self.rows.append(row)
        print(f"{name:<46} {row['wall_s']:7.1f} s wall {row['cpu_s']:7.1f} s CPU "
              f"{row['peak_rss_mib']:6d} MiB peak ({row['start_rss_mib']} at start)",
              flush=True)  # fmt: skip
        return value


def main() -> int:
    args = _arguments()
    scratch = Path(tempfile.mkdtemp(prefix="clinfuse-tables-", dir=args.scratch))
    print(f"load average before: {os.getloadavg()}", flush=True)
    print(f"RSS after imports: {_tree_rss_kib() / 1024:.0f} MiB", flush=True)
    stages = Stages()
    try:
        landing = args.landing or args.keep or scratch / "landing"
        if args.landing is None:
            per_admission = math.ceil(args.lab_rows / args.admissions)
            summary = stages.run(
                f"generate ({args.admissions} adm x {per_admission} labs)",
                lambda: generate(
                    landing,
                    admissions=args.admissions,
                    seed=0,
                    image_size=32,
                    labs_per_admission=per_admission,
                ),
            )
            print(f"labevents rows: {summary['inputs']['ehr']['labevents']:,}", flush=True)
        results = bench(Path(landing), scratch, stages, args)
        size = (Path(landing) / "ehr" / "labevents.csv.gz").stat().st_size
        results.update(lab_csv_gz_mib=round(size / 2**20), load_after=os.getloadavg())
        print(json.dumps({"stages": stages.rows, **results}, indent=1, default=str))
    finally:
        stages.peak.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def bench(landing: Path, scratch: Path, stages: Stages, args: argparse.Namespace) -> dict:
    engine = EngineConfig(
        threads=args.threads or os.cpu_count() or 1,
        memory_limit_mb=args.memory_mb or EngineConfig.for_workdir(scratch, 1).memory_limit_mb,
        temp_directory=scratch / "tmp" / "duckdb",
    )
    patients = er.read_patients(landing).rows
    admissions = er.read_admissions(landing, patients).rows
    out = {"threads": engine.threads, "memory_limit_mb": engine.memory_limit_mb}
    if args.parquet is not None:  # an ingested labevents: the window and the features only
        return _features(args.parquet, landing, scratch, stages, args, engine, out)
    labs = (args.keep_parquet or scratch) / "labevents.parquet"
    labs.parent.mkdir(parents=True, exist_ok=True)
    read = stages.run(
        "labevents ingest (DuckDB tokenizing)",
        lambda: er.stream_labevents(landing, labs, admissions, patients, engine=engine),
    )
    out.update(
        lab_rows=read.seen,
        ingested=read.ingested,
        quarantined=len(read.rejects),
        tokenizer=read.tokenizers,
    )
    csv_file = landing / (read.file or "ehr/labevents.csv.gz")
    if args.pandas_ingest:
        stages.run(
            "labevents ingest (pandas tokenizing, before)",
            lambda: er.stream_labevents(
                landing, scratch / "pandas.parquet", admissions, patients, use_engine=False
            ),
        )
        (scratch / "pandas.parquet").unlink(missing_ok=True)
    if args.baselines:
        stages.run("baseline: pandas.read_csv chunked loop", lambda: _pandas_loop(csv_file))
        stages.run("baseline: DuckDB count(*) of read_csv", lambda: _duckdb_count(csv_file, engine))
        counted = stages.run(
            "input accounting: csv.reader count", lambda: count_data_rows(csv_file)
        )
        assert counted == read.seen, (counted, read.seen)
    return _features(labs, landing, scratch, stages, args, engine, out)


def _features(
    labs: Path,
    landing: Path,
    scratch: Path,
    stages: Stages,
    args: argparse.Namespace,
    engine: EngineConfig,
    out: dict,
) -> dict:
    patients = er.read_patients(landing).rows
    admissions = er.read_admissions(landing, patients).rows
    diagnoses = er.read_diagnoses(landing, admissions, patients).rows
    cohort = build_cohort(admissions, patients, diagnoses, Settings())
    out["admissions"] = len(cohort)
    empty = pd.DataFrame(columns=["hadm_id", "study_datetime", "recorded_at", "path"])
    notes = pd.DataFrame(columns=["hadm_id", "note_type", "charttime", "text", "note_id"])
    stages.run(
        "cohort has_ehr (availability.py, as today)",
        lambda: modality_availability(cohort, labs, notes, empty, empty, 24),
    )
    stages.run(
        "cohort has_ehr (window_lab_admissions, DuckDB)",
        lambda: window_lab_admissions(labs, cohort, 24, engine),
    )
    window = scratch / "window_labs.parquet"
    out["window_rows"] = stages.run(
        "window_labs (write_window_labs)",
        lambda: write_window_labs(labs, cohort, 24, window, engine),
    )
    train = cohort[cohort["split"] == "train"]
    fitted = stages.run(
        "lab_featurizer (fit on train)",
        lambda: LabFeaturizer().fit(window, train, patients, engine=engine),
    )
    table = stages.run(
        "lab_features (transform)", lambda: fitted.transform(window, cohort, patients, engine)
    )
    out["feature_table"] = list(table.shape)
    if args.dataframe_features:
        stages.run(
            "before: window_labs + features as DataFrames",
            lambda: _dataframe_features(labs, cohort, train, patients),
        )
    if args.check:
        stages.run(
            "window check (GX on window_labs' times, batch by batch, as the check reads them)",
            lambda: expectations.validate_window(window_lab_times(window), cohort, 24, "charttime"),
        )
        stages.run(
            "before: window check (GX on window_labs as one DataFrame)",
            lambda: expectations.validate_window(pd.read_parquet(window), cohort, 24, "charttime"),
        )
    asset_path = [r for r in stages.rows if not r["stage"].startswith(("baseline", "generate"))]
    chosen = {
        "labevents ingest (DuckDB tokenizing)",
        "cohort has_ehr (availability.py, as today)",
        "window_labs (write_window_labs)",
        "lab_featurizer (fit on train)",
        "lab_features (transform)",
    }
    base = {r["stage"]: r["wall_s"] for r in stages.rows}
    out["ingest_and_features_wall_s"] = round(
        sum(r["wall_s"] for r in asset_path if r["stage"] in chosen), 1
    )
    out["peak_rss_mib_over_those"] = max(
        r["peak_rss_mib"] for r in asset_path if r["stage"] in chosen
    )
    if "baseline: DuckDB count(*) of read_csv" not in base:
        return out
    out["ingest_vs_pandas_loop"] = round(
        base["labevents ingest (DuckDB tokenizing)"]
        / base["baseline: pandas.read_csv chunked loop"],
        2,
    )
    out["ingest_vs_duckdb_count"] = round(
        base["labevents ingest (DuckDB tokenizing)"]
        / base["baseline: DuckDB count(*) of read_csv"],
        2,
    )
    return out


def _dataframe_features(labs: Path, cohort, train, patients) -> pd.DataFrame:
    """What the window_labs, lab_featurizer and lab_features assets did before, in one go."""
    window = read_window_labs(labs, cohort, 24)
    wanted = window[window["hadm_id"].isin(set(train["hadm_id"]))]
    fitted = LabFeaturizer().fit(wanted, train, patients)
    return fitted.transform(window, cohort, patients)


def _pandas_loop(path: Path) -> int:
    rows = 0
    with pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=500_000) as reader:
        for chunk in reader:
            rows += len(chunk)
    return rows


def _duckdb_count(path: Path, engine: EngineConfig) -> int:
    con = connect(engine)
    try:
        return int(
            con.execute(f"SELECT count(*) FROM read_csv({quote_literal(str(path))})").fetchone()[0]
        )
    finally:
        con.close()


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lab-rows", type=int, default=5_000_000)
    parser.add_argument("--admissions", type=int, default=1000)
    parser.add_argument("--landing", type=Path, help="an existing landing zone (no generation)")
    parser.add_argument("--keep", type=Path, help="write the generated zone here and keep it")
    parser.add_argument("--scratch", type=Path, default=None, help="folder for temporary files")
    parser.add_argument("--threads", type=int, default=0, help="DuckDB threads (0: all cores)")
    parser.add_argument("--pandas-ingest", action="store_true")
    parser.add_argument("--memory-mb", type=int, default=0, help="DuckDB's memory limit")
    parser.add_argument("--keep-parquet", type=Path, help="keep the ingested labevents here")
    parser.add_argument("--parquet", type=Path, help="an ingested labevents: no ingest stages")
    parser.add_argument("--no-baselines", dest="baselines", action="store_false")
    parser.add_argument(
        "--dataframe-features",
        action="store_true",
        help="also run the window and the features as DataFrames in memory (as before)",
    )
    parser.add_argument("--no-check", dest="check", action="store_false")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())

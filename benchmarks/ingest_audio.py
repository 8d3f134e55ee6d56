"""Audio ingest throughput and memory: `ingest_audio` (process pool) vs a plain loop.

    python benchmarks/ingest_audio.py [--landing DIR] [--recordings N] [--workers W]

Without --landing it builds a landing zone in a temporary folder: with the project's synthetic
generator (`clinfuse.synthetic.generate`) when that is importable, otherwise N recordings
written here with soundfile (mixed rates, widths, channels, WAV and FLAC, 3-20 s). It then
times, in this one process, on the same files:

- plain: for each manifest row, soundfile.read (whole file) + the same log-mel features, with
  BLAS limited to one thread as in the pool's workers (reported too with the default BLAS
  threads: on a small, busy machine OpenBLAS's second thread makes this loop 2-3x slower, which
  would flatter the pool);
- ingest_serial: ingest_audio(workers=1), everything but the pool (hashing, manifest, linking,
  shards), to separate the pool's gain from the rest;
- ingest: ingest_audio with the pool (default: every usable core).

Peak memory is sampled every 100 ms as the resident set size of this process and of all its
descendants (the tree's sum counts pages the workers share copy-on-write with the fork server
once per process: an upper bound); CPU seconds likewise, over the whole tree. On a
shared machine wall-clock ratios depend on what else runs; the CPU seconds per file do not, and
give the speedup the pool would reach with its cores to itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from threadpoolctl import threadpool_limits

from clinfuse.assets.ingest.audio.features import waveform_features
from clinfuse.assets.ingest.audio.reader import BATCH, load_recording
from clinfuse.assets.ingest.audio.recording_index import ingest_audio
from clinfuse.assets.settings import AudioSettings

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024
FORMATS = (  # (format, subtype, rate, channels)
    ("WAV", "PCM_16", 4000, 1),
    ("WAV", "PCM_16", 44100, 1),
    ("WAV", "PCM_24", 48000, 2),
    ("WAV", "FLOAT", 16000, 1),
    ("FLAC", "PCM_16", 22050, 1),
    ("FLAC", "PCM_16", 8000, 2),
)


# --- memory -------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):  # the process may have just ended
                todo.extend(int(c) for c in (task / "children").read_text().split())
    return found


def _rss_kib(pid: int) -> int:
    """Resident set size from /proc/<pid>/statm: cheap to read, unlike smaps_rollup (PSS), whose
    page-table walk, sampled every few ms, slowed a pooled run several-fold here."""
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_KIB
    except (OSError, IndexError, ValueError):
        return 0


def _cpu_s(pid: int) -> float | None:
    """utime + stime of a process (all its threads), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class TreeMonitor:
    """While active: peak RSS (MiB) of this process and of its whole process tree, and the CPU
    seconds the tree spent (workers included: they are sampled until they exit, so up to one
    interval of a worker's last moments is missed)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.interval = interval
        self.own = self.tree = 0.0
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def cpu_s(self) -> float:
        return sum(last - self._start.get(pid, 0.0) for pid, last in self._last.items())

    def _sample(self) -> None:
        me = os.getpid()
        pids = _descendants(me)
        sizes = {pid: _rss_kib(pid) for pid in pids}
        self.own = max(self.own, sizes.get(me, 0) / 1024)
        self.tree = max(self.tree, sum(sizes.values()) / 1024)
        for pid in pids:
            cpu = _cpu_s(pid)
            if cpu is not None:
                self._last[pid] = max(self._last.get(pid, 0.0), cpu)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMonitor:
        for pid in _descendants(os.getpid()):  # processes that exist already count from now
            cpu = _cpu_s(pid)
            if cpu is not None:
                self._start[pid] = cpu
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


# --- the landing zone ---------------------------------------------------------------------------


def synthesise(
    landing: Path, recordings: int, seed: int = 0, seconds: tuple[float, float] = (3, 20)
) -> None:
    """N recordings of tones in noise, lengths uniform in `seconds`, a manifest naming them, and
    matching ehr tables."""
    rng = np.random.default_rng(seed)
    audio = landing / "audio"
    (audio / "rec").mkdir(parents=True, exist_ok=True)
    (landing / "ehr").mkdir(parents=True, exist_ok=True)
    subjects = np.arange(1, recordings // 4 + 2)
    pd.DataFrame({"subject_id": subjects, "gender": "F", "anchor_age": 60}).to_csv(
        landing / "ehr/patients.csv", index=False
    )
    pd.DataFrame(
        {
            "subject_id": subjects,
            "hadm_id": subjects + 1000,
            "admittime": "2180-01-01 00:00:00",
            "dischtime": "2180-01-10 00:00:00",
        }
    ).to_csv(landing / "ehr/admissions.csv", index=False)
    rows = []
    for number in range(recordings):
        file_format, subtype, rate, channels = FORMATS[number % len(FORMATS)]
        length = rng.uniform(*seconds)
        t = np.arange(int(length * rate)) / rate
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 1500) * t)
        wave = tone[:, None] + 0.05 * rng.standard_normal((len(t), channels))
        name = f"rec/{number:06d}.{file_format.lower()}"
        sf.write(audio / name, wave, rate, format=file_format, subtype=subtype)
        rows.append((name, rng.choice(subjects), "2180-01-02 12:00:00"))
    pd.DataFrame(rows, columns=["path", "subject_id", "recorded_at"]).to_csv(
        audio / "manifest.csv", index=False
    )


def make_landing(out: Path, recordings: int, own: bool = False) -> str:
    """The generator's landing zone (about one recording per admission) if it can be used here
    and `own` is not asked for, else our own; says which."""
    try:
        if own:
            raise ImportError("own recordings asked for")
        from clinfuse.synthetic import generate  # another helper's work; may not exist yet

        generate(out=out, admissions=recordings, seed=0, messy=False, progress=None)
        if (out / "audio" / "manifest.csv").is_file():
            return "clinfuse.synthetic.generate"
    except (ImportError, TypeError):
        pass
    synthesise(out, recordings)
    return "benchmarks/ingest_audio.py synthesise"


def _read_table(landing: Path, name: str) -> pd.DataFrame:
    for suffix in (".csv", ".csv.gz"):
        path = landing / "ehr" / f"{name}{suffix}"
        if path.is_file():
            return pd.read_csv(path)
    raise FileNotFoundError(f"{landing}/ehr/{name}.csv")


def ehr_inputs(landing: Path) -> tuple[pd.DataFrame, pd.Series]:
    """admissions (typed as the ingest assets type them) and the known subject_ids."""
    admissions = _read_table(landing, "admissions")
    admissions = pd.DataFrame(
        {
            "subject_id": admissions["subject_id"].astype("Int64"),
            "hadm_id": admissions["hadm_id"].astype("Int64"),
            "admittime": pd.to_datetime(admissions["admittime"]).astype("datetime64[ns]"),
            "dischtime": pd.to_datetime(admissions["dischtime"]).astype("datetime64[ns]"),
        }
    )
    return admissions, _read_table(landing, "patients")["subject_id"].astype("Int64")


# --- the benchmark ------------------------------------------------------------------------------


def _plain_loop(paths: list[Path], settings: AudioSettings) -> int:
    done = 0
    for path in paths:
        try:
            wave, rate = sf.read(path, dtype="float32", always_2d=True)
        except sf.LibsndfileError:  # the baseline just skips what it cannot read
            continue
        if len(wave):
            waveform_features(wave, rate, settings)
            done += 1
    return done


def _timed(run, *args, **kwargs) -> tuple[object, float, TreeMonitor]:
    with TreeMonitor() as memory:
        start = time.perf_counter()
        result = run(*args, **kwargs)
        elapsed = time.perf_counter() - start
    return result, elapsed, memory


def _warm_pool(settings: AudioSettings) -> float:
    """Seconds for a first, small pooled ingest: starts the fork server (once per process)."""
    with tempfile.TemporaryDirectory() as scratch:
        landing = Path(scratch) / "landing"
        synthesise(landing, 2 * BATCH)  # fewer files than two batches run in this process
        admissions, subjects = ehr_inputs(landing)
        start = time.perf_counter()
        ingest_audio(landing, Path(scratch) / "shards", admissions, subjects, settings, 2)
        return time.perf_counter() - start


def bench_audio(
    landing: Path, settings: AudioSettings, workers: int | None = None, repeats: int = 2
) -> dict:
    """files/s and peak memory of the plain loop, ingest_audio(workers=1) and ingest_audio."""
    landing = Path(landing)
    admissions, subjects = ehr_inputs(landing)
    manifest = pd.read_csv(landing / "audio/manifest.csv", dtype=str, keep_default_na=False)
    paths = [landing / "audio" / p for p in manifest["path"] if (landing / "audio" / p).is_file()]
    files = len(manifest)

    # Warm-ups, not timed: librosa's imports in this process, the fork server of the pool.
    load_recording(paths[0], settings)
    pool_start_s = _warm_pool(settings)
    # naive: the loop as one would write it; every other phase with one BLAS thread per process
    # (ingest_audio sets that itself), so the ratios measure the pool, not BLAS contention.
    phase_limit = {"naive": None, "plain": 1, "serial": 1, "pool": 1}

    best: dict[str, float] = {}
    cpu: dict[str, float] = {}
    peak: dict[str, TreeMonitor] = {}
    results = {}
    for _ in range(repeats):  # alternating, best of `repeats`: the machine may be shared
        for phase in ("naive", "plain", "serial", "pool"):
            with tempfile.TemporaryDirectory() as scratch, threadpool_limits(phase_limit[phase]):
                if phase in ("naive", "plain"):
                    run = _timed(_plain_loop, paths, settings)
                else:
                    count = 1 if phase == "serial" else workers
                    run = _timed(
                        ingest_audio, landing, Path(scratch), admissions, subjects, settings, count
                    )
            results[phase], seconds, memory = run
            best[phase] = min(best.get(phase, seconds), seconds)
            cpu[phase] = min(cpu.get(phase, memory.cpu_s), memory.cpu_s)
            if phase not in peak or memory.tree > peak[phase].tree:
                peak[phase] = memory
    naive_s, plain_s, serial_s, pool_s = (best[k] for k in ("naive", "plain", "serial", "pool"))
    plain_mem, serial_mem, pool_mem = peak["plain"], peak["serial"], peak["pool"]
    serial, pooled = results["serial"], results["pool"]
    workers_used = min(workers or len(os.sched_getaffinity(0)), len(os.sched_getaffinity(0)))
    assert serial.index.equals(pooled.index), "the pool changed the index"
    return {
        "files": files,
        "repeats": repeats,
        "ingested": len(pooled.index),
        "quarantined": len(pooled.rejects),
        "workers": workers_used,
        "cpu_count": os.cpu_count(),
        "plain_default_blas_files_per_s": files / naive_s,
        "plain_files_per_s": files / plain_s,
        "ingest_serial_files_per_s": files / serial_s,
        "ingest_files_per_s": files / pool_s,
        "speedup_vs_plain_default_blas": naive_s / pool_s,
        "speedup_vs_plain": plain_s / pool_s,
        "speedup_vs_serial_ingest": serial_s / pool_s,
        "plain_cpu_ms_per_file": 1000 * cpu["plain"] / files,
        "ingest_serial_cpu_ms_per_file": 1000 * cpu["serial"] / files,
        "ingest_cpu_ms_per_file": 1000 * cpu["pool"] / files,
        # What the pool would reach with its cores to itself: the work it does per file, spread
        # over `workers` processes, against the plain loop's work per file.
        "projected_speedup_idle_cores": workers_used * cpu["plain"] / cpu["pool"],
        "plain_peak_mib": plain_mem.own,
        "ingest_serial_peak_mib": serial_mem.own,
        "ingest_peak_parent_mib": pool_mem.own,
        "ingest_peak_tree_mib": pool_mem.tree,
        "pool_cold_start_s": pool_start_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--landing", type=Path, help="an existing landing zone (with ehr/)")
    parser.add_argument("--recordings", type=int, default=300)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many runs")
    parser.add_argument("--own", action="store_true", help="not the project's generator")
    args = parser.parse_args()
    settings = AudioSettings()
    with tempfile.TemporaryDirectory() as scratch:
        landing = args.landing
        if landing is None:
            landing = Path(scratch) / "landing"
            start = time.perf_counter()
            made_by = make_landing(landing, args.recordings, args.own)
            print(f"landing zone: {made_by}, {time.perf_counter() - start:.1f} s")
        result = bench_audio(landing, settings, args.workers, args.repeats)
    for key, value in result.items():
        print(f"{key:32s} {value:.2f}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()

"""DICOM ingest throughput and memory: `ingest_dicom` against a plain single-process loop.

    python benchmarks/ingest_dicom.py                       # generate a landing zone, then measure
    python benchmarks/ingest_dicom.py --landing DIR         # measure an existing one

The plain loop is what one would write first: `pydicom.dcmread` + `pixel_array` + the same MONAI
resize, one file after another, in this process (torch limited to one thread, like the pool's
workers: on a 64 x 64 resize more threads only spin). `ingest_dicom` does more per file (sha256,
the whole pixel rule, header, linking, shards) across a process pool. Both run over the same
files, after one untimed pass that puts them in the page cache; times are the best of a few
alternating runs (the machine may be shared). CPU seconds (this process and its descendants,
from /proc) give the speed-up the pool would reach on idle cores, whatever else the machine is
running. Memory is the peak, sampled every 100 ms, of the proportional set size (PSS): of this
process for the plain loop, summed over this process and its descendants (fork server, workers)
for `ingest_dicom`, so pages the workers share count once; and of the resident set size (RSS)
summed the same way, which counts shared pages once per process (an upper bound).

"cold start" is the first `ingest_dicom` call, which starts the pool (the fork server imports
torch and both readers: seconds, once per process). To show that memory does not grow with the
number of files, everything is measured on a quarter of the files and on all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from memory import process_tree, rss_kib


def bench_dicom(
    landing: Path, image_size: int, workers: int | None = None, repeats: int = 3
) -> dict:
    """Files/s and peak PSS of the plain loop and of ingest_dicom, and the speed-up.

    Times are the best of `repeats` alternating runs, unsampled (the memory sampler is a thread
    in this process and would slow the plain loop); memory comes from one more sampled run of
    each. "cold" is the first ingest call (it starts the pool).
    """
    from clinfuse.assets.ingest.dicom.reader import discover

    landing = Path(landing)
    files = [landing / "dicom" / p for p in discover(landing / "dicom")]
    admissions, subjects = _ehr(landing)
    for path in files:  # page cache, so that neither side pays for the first read
        path.read_bytes()
    _plain_loop(files[:1], image_size)  # imports (MONAI: seconds) outside the timed loop
    import torch

    torch.set_num_threads(1)
    plain = lambda: _plain_loop(files, image_size)  # noqa: E731
    with tempfile.TemporaryDirectory() as scratch:
        ingest = _ingest_runner(landing, Path(scratch), admissions, subjects, image_size, workers)
        cold = _timed(ingest)
        times: dict[str, list[float]] = {"plain": [], "ingest": []}
        cpu: dict[str, list[float]] = {"plain": [], "ingest": []}
        for _ in range(repeats):
            for name, work in (("plain", plain), ("ingest", ingest)):
                run = _timed(work)
                times[name].append(run["seconds"])
                cpu[name].append(run["cpu_seconds"])
        memory = {"plain": _measure(plain, tree=False), "ingest": _measure(ingest, tree=True)}
    out: dict = {
        "files": len(files),
        "image_size": image_size,
        "workers": workers or os.cpu_count(),
    }
    for name in ("plain", "ingest"):
        best = min(times[name])
        out[name] = {
            "files_per_s": round(len(files) / best, 1),
            "seconds": [round(t, 2) for t in times[name]],
            "cpu_seconds": [round(t, 2) for t in cpu[name]],
            "peak_pss_mb": round(memory[name]["peak_pss_mb"], 1),
            "peak_rss_mb": round(memory[name]["peak_rss_mb"], 1),
            "result": memory[name]["value"],
        }
    out["ingest_cold"] = {"seconds": round(cold["seconds"], 2), "result": cold["value"]}
    out["speedup"] = round(out["ingest"]["files_per_s"] / out["plain"]["files_per_s"], 2)
    # What the speed-up would be with `workers` idle cores: CPU per file decides it.
    per_worker = min(cpu["ingest"]) / out["workers"]
    out["speedup_if_cores_idle"] = round(min(cpu["plain"]) / per_worker, 2)
    out["load_average"] = os.getloadavg()
    return out


def _plain_loop(files: list[Path], image_size: int) -> dict:
    import pydicom
    from monai.transforms import Resize

    resize = Resize(spatial_size=(image_size, image_size), mode="area")
    done = failed = 0
    for path in files:
        try:
            arr = np.asarray(pydicom.dcmread(path).pixel_array, dtype=np.float32)
            if arr.ndim == 3 and arr.shape[-1] == 3:  # colour: average the channels
                arr = arr.mean(axis=-1)
            if arr.ndim == 3:  # frames: the middle one
                arr = arr[arr.shape[0] // 2]
            np.asarray(resize(arr[None]))
            done += 1
        except Exception:
            failed += 1
    return {"decoded": done, "failed": failed}


def _ingest_runner(
    landing: Path,
    scratch: Path,
    admissions: pd.DataFrame,
    subjects: pd.Series,
    image_size: int,
    workers: int | None,
) -> Callable[[], dict]:
    from clinfuse.assets.ingest.dicom.study_index import ingest_dicom

    def run() -> dict:
        shard_dir = scratch / "shards"
        shutil.rmtree(shard_dir, ignore_errors=True)
        result = ingest_dicom(landing, shard_dir, admissions, subjects, image_size, workers)
        return {"seen": result.seen, "ingested": len(result.index), "rejects": len(result.rejects)}

    return run


def _ehr(landing: Path) -> tuple[pd.DataFrame, pd.Series]:
    """admissions and patients' subject_id from ehr/ (empty without one: all unknown patient)."""
    ehr = landing / "ehr"
    found = {p.name.split(".")[0]: p for p in ehr.glob("*.csv*")} if ehr.is_dir() else {}
    if "admissions" not in found or "patients" not in found:
        empty = pd.DataFrame({c: pd.array([], dtype="Int64") for c in ("subject_id", "hadm_id")})
        empty["admittime"] = empty["dischtime"] = pd.Series([], dtype="datetime64[ns]")
        return empty, pd.Series([], dtype="Int64")
    admissions = pd.read_csv(found["admissions"], parse_dates=["admittime", "dischtime"])
    admissions = admissions.astype({"subject_id": "Int64", "hadm_id": "Int64"})
    subjects = pd.read_csv(found["patients"], usecols=["subject_id"])["subject_id"]
    return admissions, subjects.astype("Int64")


# --- measuring -------------------------------------------------------------------------------


def _timed(work: Callable[[], dict]) -> dict:
    """Wall seconds, and CPU seconds of this process and its descendants (live or reaped)."""
    cpu, started = _tree_cpu(), time.perf_counter()
    value = work()
    seconds = time.perf_counter() - started
    time.sleep(0.2)  # let the fork server reap the pool's workers: their CPU joins its cutime
    return {"seconds": seconds, "cpu_seconds": _tree_cpu() - cpu, "value": value}


def _tree_cpu() -> float:
    total = 0
    for pid in process_tree():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def _measure(work: Callable[[], dict], tree: bool) -> dict:
    """Runs `work` once, sampling the peak PSS of this process (and its descendants)."""
    peak = {"peak_pss_mb": 0.0, "peak_rss_mb": 0.0}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = process_tree() if tree else [os.getpid()]
            peak["peak_pss_mb"] = max(peak["peak_pss_mb"], sum(map(_pss_kib, pids)) / 1024)
            peak["peak_rss_mb"] = max(peak["peak_rss_mb"], sum(map(rss_kib, pids)) / 1024)
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        value = work()
    finally:
        stop.set()
        sampler.join()
    return {"value": value, **peak}


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


# --- a landing zone to measure ---------------------------------------------------------------


def make_landing(out: Path, admissions: int, pixels: int, seed: int = 0) -> Path:
    """clinfuse's synthetic generator (every transfer syntax it writes), or plain files."""
    try:
        from clinfuse.synthetic import generate
    except ImportError:
        return _plain_landing(out, admissions, pixels, seed)
    generate(out, admissions=admissions, seed=seed, messy=True, image_size=pixels)
    return out


def _plain_landing(out: Path, files: int, pixels: int, seed: int) -> Path:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    rng = np.random.default_rng(seed)
    for n in range(files):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
        ds.PatientID, ds.StudyDate, ds.StudyTime = "1", "21800101", "120000"
        ds.Rows = ds.Columns = pixels
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = rng.integers(0, 4096, (pixels, pixels), dtype=np.uint16).tobytes()
        path = out / "dicom" / f"{n // 100:03d}" / f"{n:06d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return out


def _quarter(landing: Path, out: Path) -> Path:
    """A landing zone of hard links to the first quarter of `landing`'s DICOM files (a symbolic
    link out of the zone would be quarantined "outside landing zone", never read)."""
    from clinfuse.assets.ingest.dicom.reader import discover

    paths = discover(landing / "dicom")
    for relative in paths[: max(1, len(paths) // 4)]:
        target = out / "dicom" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        os.link(landing / "dicom" / relative, target)
    if (landing / "ehr").is_dir():
        (out / "ehr").symlink_to(landing / "ehr")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--landing", type=Path, help="an existing landing zone")
    parser.add_argument("--admissions", type=int, default=600, help="for a generated one")
    parser.add_argument("--pixels", type=int, default=512, help="rows/columns of generated images")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        landing = args.landing or make_landing(
            Path(scratch) / "landing", args.admissions, args.pixels
        )
        quarter = _quarter(landing, Path(scratch) / "quarter")
        results = {
            "quarter": bench_dicom(quarter, args.image_size, args.workers),
            "all": bench_dicom(landing, args.image_size, args.workers),
        }
    print(json.dumps(results, indent=2))
    for name, r in results.items():
        plain, ingest = r["plain"], r["ingest"]
        print(
            f"{name:8s} {r['files']:6d} files | plain {plain['files_per_s']:7.1f} files/s "
            f"{plain['peak_pss_mb']:6.0f} MB | ingest_dicom {ingest['files_per_s']:7.1f} files/s "
            f"{ingest['peak_pss_mb']:6.0f} MB | x{r['speedup']} (CPU bound: "
            f"x{r['speedup_if_cores_idle']}) | cold start "
            f"{r['ingest_cold']['seconds']} s | load {r['load_average'][0]:.1f}"
        )


if __name__ == "__main__":
    main()

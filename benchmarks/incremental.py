"""Incremental ingest: what a new delivery costs against decoding the whole landing zone.

    .venv/bin/python benchmarks/incremental.py --admissions 1000 [--share 0.1]

Generates a landing zone, then, on one work directory and one Dagster instance, as `clinfuse run`
drives them (record the look, run the new delivery's partition, rebuild the indexes):

1. the first delivery: every film and recording decoded (the plain baseline: a full ingest);
2. a rerun with nothing new: no partition runs, the indexes are rebuilt from the store;
3. a delivery adding `share` more films and recordings (new instances of existing films, new
   bytes, and re-encoded recordings with manifest rows): only those are decoded.

Prints wall seconds of the decode (the partition run) and of the index rebuild for each, the
files decoded, the ratio of the new delivery's decode to the full one's, and peak memory.
Training is left out: it does not depend on what was decoded when.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pydicom
import soundfile as sf
from pydicom.uid import generate_uid

sys.path.insert(0, str(Path(__file__).parent))

from memory import TreeSampler  # noqa: E402

from clinfuse.assets.settings import Settings  # noqa: E402
from clinfuse.orchestration.definitions import build_definitions  # noqa: E402
from clinfuse.orchestration.deliveries import apply_partitions, record_deliveries  # noqa: E402
from clinfuse.synthetic import generate  # noqa: E402

INDEXES = ["patients", "admissions", "dicom_index", "study_images"]
INDEXES += ["recording_index", "recording_spectrograms"]


def look(defs: dg.Definitions, instance: dg.DagsterInstance, landing: Path, workdir: Path):
    """One look at the zone as `clinfuse run` takes it: (decode s, rebuild s, decoded)."""
    plan = record_deliveries(landing, workdir, Settings(), instance)
    apply_partitions(plan, instance)
    decode_s = 0.0
    if plan.added is not None:
        started = time.perf_counter()
        job = defs.resolve_job_def("ingest_deliveries")
        assert job.execute_in_process(instance=instance, partition_key=plan.added).success
        decode_s = time.perf_counter() - started
    started = time.perf_counter()
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(k) for k in INDEXES]
    )
    assert result.success
    rebuild_s = time.perf_counter() - started
    dicom = result.output_for_node("dicom_studies", "dicom_index")
    audio = result.output_for_node("recordings", "recording_index")
    return {
        "decode_s": round(decode_s, 2),
        "rebuild_s": round(rebuild_s, 2),
        "dicom": {"seen": dicom.seen, "decoded": dicom.decoded},
        "audio": {"seen": audio.seen, "decoded": audio.decoded},
    }


def add_delivery(landing: Path, share: float, seed: int = 1) -> dict[str, int]:
    """`share` x the films and recordings again, as new files: films with new instance UIDs
    (so new bytes, the same decoding work), recordings re-encoded with a little noise."""
    rng = np.random.default_rng(seed)
    films = sorted(p for p in (landing / "dicom").rglob("*") if p.is_file() and p.suffix)
    films = [p for p in films if p.name != "manifest.csv"]
    target = landing / "dicom" / "delivery-2"
    target.mkdir()
    added_films = 0
    for number, film in enumerate(rng.permutation(films)[: int(share * len(films))]):
        try:
            ds = pydicom.dcmread(film)
        except Exception:  # the messy zone's unreadable files: not worth copying
            continue
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(target / f"{number}.dcm", enforce_file_format=True)
        added_films += 1
    manifest = landing / "audio" / "manifest.csv"
    with manifest.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    fields = list(rows[0])
    (landing / "audio" / "delivery-2").mkdir()
    new_rows = []
    for number, row in enumerate(rng.permutation(rows)[: int(share * len(rows))]):
        try:
            wave, rate = sf.read(landing / "audio" / row["path"])
        except Exception:
            continue
        name = f"delivery-2/{number}.wav"
        sf.write(landing / "audio" / name, wave + rng.normal(0, 1e-3, wave.shape), rate)
        new_rows.append({**row, "path": name})
    with manifest.open("a", newline="") as handle:
        csv.DictWriter(handle, fields).writerows(new_rows)
    return {"films": added_films, "recordings": len(new_rows)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=1000)
    parser.add_argument("--share", type=float, default=0.1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="clinfuse-incremental-") as scratch:
        landing, workdir, home = (Path(scratch) / n for n in ("landing", "work", "home"))
        generate(landing, admissions=args.admissions, seed=0)
        home.mkdir()
        defs = build_definitions(landing, workdir, Settings())
        with TreeSampler() as sampler, dg.DagsterInstance.local_temp(str(home)) as instance:
            full = look(defs, instance, landing, workdir)
            nothing_new = look(defs, instance, landing, workdir)
            added = add_delivery(landing, args.share)
            grown = look(defs, instance, landing, workdir)
    ratio = grown["decode_s"] / full["decode_s"]
    result = {
        "admissions": args.admissions,
        "full": full,
        "nothing_new": nothing_new,
        "added": added,
        "new_delivery": grown,
        "new_delivery_decode_vs_full": round(ratio, 3),
        "files_share": round(
            (grown["dicom"]["decoded"] + grown["audio"]["decoded"])
            / (full["dicom"]["decoded"] + full["audio"]["decoded"]),
            3,
        ),
        "peak_mib": round(sampler.peak_mib),
    }
    print(json.dumps(result, indent=1))
    print(
        f"new delivery ({added}): decode {grown['decode_s']} s vs full {full['decode_s']} s "
        f"= x{ratio:.3f} for x{result['files_share']} the files; nothing new: decoded "
        f"{nothing_new['dicom']['decoded']} + {nothing_new['audio']['decoded']}, rebuild "
        f"{nothing_new['rebuild_s']} s; peak {result['peak_mib']} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

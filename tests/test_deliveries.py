"""Incremental ingest: each delivery decoded once (a Dagster partition), kept across runs.

Real Dagster runs on a persistent instance, as `clinfuse run` drives them (record the landing
zone's new files as a delivery, run its partition, rebuild the index over every delivery), on a
tiny generated landing zone; training is left out, it does not change what is decoded.
"""

from __future__ import annotations

import shutil

import dagster as dg
import pydicom
import pytest
from pydicom.uid import generate_uid

from clinfuse.assets.ingest.deliveries import read_ledger
from clinfuse.assets.settings import settings_from_dict
from clinfuse.orchestration.definitions import build_definitions
from clinfuse.orchestration.deliveries import apply_partitions, record_deliveries
from clinfuse.synthetic import generate

INDEXES = ["patients", "admissions", "dicom_index", "study_images"]
INDEXES += ["recording_index", "recording_spectrograms"]


@pytest.fixture
def zone(tmp_path):
    landing, workdir = tmp_path / "landing", tmp_path / "work"
    generate(landing, admissions=16, seed=11, image_size=32)
    settings = settings_from_dict({"audio": {"seconds": 1.0}})
    defs = build_definitions(landing, workdir, settings, workers=1)
    (tmp_path / "dagster_home").mkdir()
    with dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster_home")) as instance:

        def refresh() -> dict:
            """What `clinfuse run` does, without training: one look, one partition, a rebuild."""
            plan = record_deliveries(landing, workdir, settings, instance)
            apply_partitions(plan, instance)
            if plan.added is not None:
                decode = defs.resolve_job_def("ingest_deliveries")
                run = decode.execute_in_process(instance=instance, partition_key=plan.added)
                assert run.success
            job = defs.resolve_implicit_global_asset_job_def()
            result = job.execute_in_process(
                instance=instance, asset_selection=[dg.AssetKey(k) for k in INDEXES]
            )
            assert result.success
            return {
                "plan": plan,
                "dicom": result.output_for_node("dicom_studies", "dicom_index"),
                "audio": result.output_for_node("recordings", "recording_index"),
                "partitions": instance.get_dynamic_partitions("deliveries"),
            }

        yield {"landing": landing, "workdir": workdir, "refresh": refresh}


def _new_films(landing, count: int) -> list[str]:
    """Copies of ingested films as a hospital's next delivery: new instances (new UIDs, so new
    bytes), and one byte-for-byte copy under another name."""
    films = sorted(p for p in (landing / "dicom").rglob("*.dcm"))[:count]
    target = landing / "dicom" / "delivery-2"
    target.mkdir()
    for number, film in enumerate(films):
        ds = pydicom.dcmread(film)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.save_as(target / f"new-{number}.dcm", enforce_file_format=True)
    shutil.copy(films[0], target / "same-bytes.dcm")
    return sorted(f"dicom/delivery-2/{p.name}" for p in target.iterdir())


def test_each_file_is_decoded_once_and_a_removed_delivery_leaves(zone):
    first = zone["refresh"]()
    films = first["dicom"].seen
    assert films > 3 and first["dicom"].decoded == films  # everything is new
    assert first["audio"].decoded > 0
    assert first["partitions"] == [first["plan"].added]
    index = first["dicom"].rows

    again = zone["refresh"]()  # nothing new
    assert again["plan"].added is None
    assert again["dicom"].decoded == 0 and again["audio"].decoded == 0
    assert again["dicom"].rows.equals(index)
    assert again["dicom"].rejects.equals(first["dicom"].rejects)

    added = _new_films(zone["landing"], 3)
    grown = zone["refresh"]()
    delivery = grown["plan"].added
    assert sorted(grown["partitions"]) == sorted([first["plan"].added, delivery])
    ledger = read_ledger(zone["workdir"])
    assert sorted(ledger.loc[ledger["delivery"] == delivery, "path"]) == added
    # Only the three new instances are decoded; the copy is recognised by its sha256, copied
    # from the store, and quarantined as the duplicate it is. Nothing else is decoded again.
    assert grown["dicom"].decoded == 3 and grown["audio"].decoded == 0
    assert grown["dicom"].seen == films + 4
    assert len(grown["dicom"].rows) == len(index) + 3
    reasons = grown["dicom"].rejects.set_index("source")["reason"]
    assert reasons["dicom/delivery-2/same-bytes.dcm"] == "duplicate instance"

    shutil.rmtree(zone["landing"] / "dicom" / "delivery-2")
    shrunk = zone["refresh"]()
    assert shrunk["plan"].reconciled.removed == (delivery,)
    assert shrunk["partitions"] == [first["plan"].added]
    assert shrunk["dicom"].seen == films and shrunk["dicom"].decoded == 0
    assert shrunk["dicom"].rows.equals(index)
    assert not any((zone["workdir"] / "decoded" / "dicom").glob(f"*/{delivery}*"))

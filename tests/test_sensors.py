"""The landing-zone sensor and the nightly schedule: one run request per batch of new files,
once they stop growing; new images and recordings become a delivery (a partition) first."""

from __future__ import annotations

import dagster as dg
import pytest

from clinfuse.assets.ingest.deliveries import read_ledger
from clinfuse.orchestration.definitions import build_definitions
from clinfuse.orchestration.sensors import daily_full_pipeline, landing_zone_sensor


@pytest.fixture
def ticker(tmp_path):
    landing, workdir = tmp_path / "landing", tmp_path / "work"
    landing.mkdir()
    defs = build_definitions(landing, workdir)
    # On disk, not ephemeral: a schedule's context reopens its instance from a reference.
    (tmp_path / "dagster_home").mkdir()
    instance = dg.DagsterInstance.local_temp(tempdir=str(tmp_path / "dagster_home"))
    resources = defs.resources

    def tick(cursor):
        context = dg.build_sensor_context(
            cursor=cursor,
            resources=resources,
            instance=instance,
            repository_def=defs.get_repository_def(),
        )
        # Called directly: evaluate_tick would validate the request's partition against the
        # instance before the partition requests beside it are applied (the daemon applies
        # them first). The daemon's part is done here, as it would be.
        result = landing_zone_sensor(context)
        for request in result.dynamic_partitions_requests or []:
            if isinstance(request, dg.AddDynamicPartitionsRequest):
                instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
            else:
                for key in request.partition_keys:
                    instance.delete_dynamic_partition(request.partitions_def_name, key)
        return result.run_requests or [], result.cursor

    tick.landing, tick.workdir, tick.instance, tick.defs = landing, workdir, instance, defs
    return tick


def test_a_new_file_gives_exactly_one_run_request(ticker):
    landing = ticker.landing
    (landing / "ehr").mkdir()
    (landing / "ehr" / "patients.csv").write_text("subject_id,gender,anchor_age\n1,F,50\n")
    requests, cursor = ticker(None)
    assert requests == []  # first sight: pending until its size is stable
    requests, cursor = ticker(cursor)
    assert len(requests) == 1
    # A table only: nothing to decode, so the run rebuilds without the delivery assets.
    assert requests[0].partition_key is None
    selected = {key.to_user_string() for key in requests[0].asset_selection}
    assert "dicom_index" in selected and not selected & {"dicom_delivery", "audio_delivery"}
    requests, cursor = ticker(cursor)
    assert requests == []  # nothing new

    recording = landing / "audio" / "a.wav"
    recording.parent.mkdir()
    recording.write_bytes(b"RIFF" + b"\0" * 100)
    requests, cursor = ticker(cursor)
    assert requests == []
    recording.write_bytes(b"RIFF" + b"\0" * 5000)  # still being copied
    requests, cursor = ticker(cursor)
    assert requests == []
    requests, cursor = ticker(cursor)
    assert len(requests) == 1
    assert requests[0].tags["clinfuse/new_files"] == "1"
    delivery = requests[0].partition_key
    assert ticker.instance.get_dynamic_partitions("deliveries") == [delivery]
    assert list(read_ledger(ticker.workdir)["delivery"]) == [delivery]
    assert ticker(cursor)[0] == []


def test_a_delivery_removed_from_the_zone_leaves_the_partitions(ticker):
    landing = ticker.landing
    (landing / "dicom" / "batch1").mkdir(parents=True)
    (landing / "dicom" / "batch1" / "a.dcm").write_bytes(b"\0" * 300)
    cursor = ticker(ticker(None)[1])[1]
    (landing / "dicom" / "batch2").mkdir()
    (landing / "dicom" / "batch2" / "b.dcm").write_bytes(b"\0" * 300)
    requests, cursor = ticker(ticker(cursor)[1])
    first, second = sorted(ticker.instance.get_dynamic_partitions("deliveries"))
    assert requests[0].partition_key == second

    (landing / "dicom" / "batch1" / "a.dcm").unlink()
    (landing / "dicom" / "batch2" / "c.dcm").write_bytes(b"\0" * 300)  # something to tick on
    requests, cursor = ticker(ticker(cursor)[1])
    kept = ticker.instance.get_dynamic_partitions("deliveries")
    assert first not in kept and second in kept and len(kept) == 2
    assert set(read_ledger(ticker.workdir)["path"]) == {"dicom/batch2/b.dcm", "dicom/batch2/c.dcm"}


def test_the_nightly_schedule_records_what_arrived_since(ticker):
    (ticker.landing / "dicom").mkdir()
    (ticker.landing / "dicom" / "a.dcm").write_bytes(b"\0" * 300)
    context = dg.build_schedule_context(
        instance=ticker.instance,
        resources=ticker.defs.resources,
        repository_def=ticker.defs.get_repository_def(),
    )
    request = daily_full_pipeline(context)
    assert request.partition_key == ticker.instance.get_dynamic_partitions("deliveries")[0]
    again = daily_full_pipeline(context)
    assert again.partition_key is None and again.asset_selection  # nothing new: a rebuild

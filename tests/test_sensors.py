"""The landing-zone sensor: one run request per batch of new files, once they stop growing."""

from __future__ import annotations

import dagster as dg

from clinfuse.assets.resources import LandingZone
from clinfuse.orchestration.sensors import landing_zone_sensor


def _tick(landing, cursor):
    context = dg.build_sensor_context(
        cursor=cursor, resources={"landing": LandingZone(path=str(landing))}
    )
    result = landing_zone_sensor.evaluate_tick(context)
    return result.run_requests or [], result.cursor


def test_a_new_file_gives_exactly_one_run_request(tmp_path):
    (tmp_path / "ehr").mkdir()
    (tmp_path / "ehr" / "patients.csv").write_text("subject_id,gender,anchor_age\n1,F,50\n")
    requests, cursor = _tick(tmp_path, None)
    assert requests == []  # first sight: pending until its size is stable
    requests, cursor = _tick(tmp_path, cursor)
    assert len(requests) == 1
    requests, cursor = _tick(tmp_path, cursor)
    assert requests == []  # nothing new

    recording = tmp_path / "audio" / "a.wav"
    recording.parent.mkdir()
    recording.write_bytes(b"RIFF" + b"\0" * 100)
    requests, cursor = _tick(tmp_path, cursor)
    assert requests == []
    recording.write_bytes(b"RIFF" + b"\0" * 5000)  # still being copied
    requests, cursor = _tick(tmp_path, cursor)
    assert requests == []
    requests, cursor = _tick(tmp_path, cursor)
    assert len(requests) == 1
    assert requests[0].tags["clinfuse/new_files"] == "1"
    assert _tick(tmp_path, cursor)[0] == []

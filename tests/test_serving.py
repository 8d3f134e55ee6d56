"""The served model's contract (../shared/cli-and-report.md, "The served model"), on the champion
that the session's pipeline run registered (conftest: tiny messy landing zone, tiny training).

Each row is scored on its own: one response row per request row, `p_fusion` in [0, 1] always,
and `errors` naming every input that was refused or could not be read. A path is read only inside
CLINFUSE_SERVE_ROOT; the root here is a folder of copies, so that refusals can be told apart from
files that would decode fine.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pydicom
import pytest

from clinfuse.assets.evaluation import serve_inputs
from clinfuse.assets.evaluation.serve_inputs import SERVE_ROOT_ENV
from clinfuse.assets.evaluation.serving import OUTPUT_COLUMNS, serving_frame
from clinfuse.assets.mlflow_resource import MLflowResource
from tests.conftest import load_champion, test_split_requests

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SERVER_STARTUP_S = 180  # a cold `mlflow models serve` imports torch, MLflow and the model


@pytest.fixture(scope="module")
def champion(pipeline_run) -> mlflow.pyfunc.PyFuncModel:
    return load_champion(pipeline_run)


@pytest.fixture(scope="module")
def files(pipeline_run, tmp_path_factory) -> dict[str, Path]:
    """A served root holding copies of an ingested film and recording, a symlink out of it, and
    the same film outside it (it would decode fine, if it were ever read)."""
    tables, landing = pipeline_run["workdir"] / "tables", pipeline_run["landing"]
    image = landing / pd.read_parquet(tables / "dicom_index.parquet")["path"].iloc[0]
    recording = landing / pd.read_parquet(tables / "recording_index.parquet")["path"].iloc[0]
    base = tmp_path_factory.mktemp("serve").resolve()  # compared with resolved paths
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    shutil.copyfile(image, root / "cxr.dcm")
    shutil.copyfile(recording, root / f"lungs{recording.suffix}")
    shutil.copyfile(image, outside / "cxr.dcm")
    (root / "escape.dcm").symlink_to(outside / "cxr.dcm")
    return {
        "root": root,
        "image": root / "cxr.dcm",
        "recording": root / f"lungs{recording.suffix}",
        "outside": outside / "cxr.dcm",
        "escape": root / "escape.dcm",
    }


@pytest.fixture(scope="module")
def admission(pipeline_run) -> dict:
    """One test admission as the pipeline would send it, with labs and a note, files unset."""
    tables = pipeline_run["workdir"] / "tables"
    cohort = pd.read_parquet(tables / "cohort.parquet")
    frame = serving_frame(
        cohort[cohort["split"] == "test"].reset_index(drop=True),
        tables / "labevents.parquet",
        pd.read_parquet(tables / "notes.parquet"),
        pd.read_parquet(tables / "dicom_index.parquet"),
        pd.read_parquet(tables / "recording_index.parquet"),
        pipeline_run["landing"],
        24.0,
    )
    full = frame[frame["labs"].notna() & frame["notes"].notna()]
    return {**full.iloc[0].to_dict(), "image_path": None, "recording_path": None}


@pytest.fixture
def opened(monkeypatch) -> Iterator[list]:
    """Every source the image and recording readers are handed, as the served model calls them."""
    seen: list = []
    for name in ("load_image", "load_recording"):
        real = getattr(serve_inputs, name)

        def spy(source, *args, _real=real):
            seen.append(source)
            return _real(source, *args)

        monkeypatch.setattr(serve_inputs, name, spy)
    yield seen


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _declaring_huge(dicom: bytes) -> bytes:
    """The same file, its header declaring 1.7 GB of pixels (the bytes stay small)."""
    ds = pydicom.dcmread(io.BytesIO(dicom))
    ds.Rows = ds.Columns = 30_000
    out = io.BytesIO()
    ds.save_as(out)
    return out.getvalue()


def _score(model, rows: list[dict]) -> pd.DataFrame:
    out = model.predict(pd.DataFrame(rows))
    assert list(out.columns) == OUTPUT_COLUMNS
    assert len(out) == len(rows)
    for p, errors in zip(out["p_fusion"], out["errors"], strict=True):
        assert math.isfinite(p) and 0.0 <= p <= 1.0
        assert all(isinstance(e, str) and e.endswith(".") for e in errors)
        assert not any("Traceback" in e or "\n" in e for e in errors)
    return out


def test_a_mixed_batch_scores_every_row_and_names_each_bad_input(
    champion, admission, files, monkeypatch, opened
):
    monkeypatch.setenv(SERVE_ROOT_ENV, str(files["root"]))
    image_bytes = files["image"].read_bytes()
    recording = files["recording"].read_bytes()
    # (row, the inputs its errors must name, the row it must score like)
    cases = [
        ({}, [], None),
        ({"image_path": str(files["image"]), "recording_b64": _b64(recording)}, [], None),
        ({"image_b64": _b64(image_bytes), "recording_path": files["recording"].name}, [], 1),
        ({"image_path": "/etc/passwd"}, ["image_path"], 0),
        ({"image_path": str(files["outside"])}, ["image_path"], 0),
        ({"image_path": str(files["escape"])}, ["image_path"], 0),  # a symlink out of the root
        ({"image_path": "../outside/cxr.dcm"}, ["image_path"], 0),
        ({"image_path": str(files["root"] / "nowhere.dcm")}, ["image_path"], 0),
        ({"image_b64": "this is not base64!"}, ["image_b64"], 0),
        ({"image_b64": _b64(b"GIF89a, not a DICOM")}, ["image_b64"], 0),
        ({"image_b64": _b64(_declaring_huge(image_bytes))}, ["image_b64"], 0),
        ({"recording_b64": _b64(b"RIFF\x10\x00\x00\x00WAVEjunk")}, ["recording_b64"], 0),
        ({"labs": '[{"itemid": 51301, "charttime": '}, ["labs"], 13),
        ({"labs": None}, [], None),
        ({"admittime": "the day before yesterday"}, ["admittime", "labs"], 16),
        ({"anchor_age": "old"}, ["anchor_age"], None),
        ({"admittime": None, "labs": None}, [], None),
    ]
    rows = [{**admission, **changes} for changes, _, _ in cases]
    rows.append({"hadm_id": None})  # nothing at all: still a row, still scored
    out = _score(champion, rows)

    for number, (_, names, twin) in enumerate(cases):
        errors = out["errors"].iloc[number]
        assert len(errors) == len(names), (number, errors)
        for name, sentence in zip(names, errors, strict=True):
            assert sentence.startswith(name), (number, sentence)
        if twin is not None:  # a refused input counts as missing: the row scores as without it
            assert out["p_fusion"].iloc[number] == pytest.approx(out["p_fusion"].iloc[twin])
    assert out["errors"].iloc[-1] == []
    assert "outside" in out["errors"].iloc[3][0]
    assert "no file" in out["errors"].iloc[7][0]
    assert "image too large" in out["errors"].iloc[10][0]  # the run's limits.max_image_mb
    # The readers got the good files, by path and as bytes ...
    paths = {Path(s).resolve() for s in opened if not isinstance(s, bytes)}
    assert {files["image"], files["recording"]} <= paths
    assert image_bytes in opened and recording in opened
    # ... and never a refused one: the film outside the root would have decoded fine.
    assert not paths & {files["outside"], Path("/etc/passwd")}


def test_without_a_serve_root_every_path_is_refused(champion, admission, files, monkeypatch):
    monkeypatch.delenv(SERVE_ROOT_ENV, raising=False)
    out = _score(champion, [admission, {**admission, "image_path": str(files["image"])}])
    assert out["errors"].iloc[0] == []
    (sentence,) = out["errors"].iloc[1]
    assert sentence.startswith("image_path") and SERVE_ROOT_ENV in sentence
    assert out["p_fusion"].iloc[1] == pytest.approx(out["p_fusion"].iloc[0])


def test_rows_are_scored_alone(champion, admission, files, monkeypatch):
    """A row's score does not depend on the other rows, bad or good, or on sharing its ids."""
    monkeypatch.setenv(SERVE_ROOT_ENV, str(files["root"]))
    good = {**admission, "image_path": str(files["image"])}
    alone = _score(champion, [good])["p_fusion"].iloc[0]
    hostile = [
        {"labs": "{"},
        {"admittime": 17},
        {"labs": '[{"itemid": 1e30, "charttime": "2180-01-01 10:00", "valuenum": 1}]'},
        {"anchor_age": 1e308, "anchor_year": -1e308, "gender": "?"},
        {"admittime": "2180-01-01T08:00:00+05:00", "notes": ""},
    ]
    crowd = [{**admission, **hostile[0]}, good, *({**admission, **h} for h in hostile[1:]), good]
    out = _score(champion, crowd)
    assert out["p_fusion"].iloc[-1] == pytest.approx(alone)
    assert out["p_fusion"].iloc[1] == pytest.approx(alone)
    assert out["errors"].iloc[1] == out["errors"].iloc[-1] == []
    assert [len(e) for e in out["errors"].iloc[2:-1]] == [2, 1, 0, 0]  # admittime (+ labs), labs


def test_reading_from_sets_the_root_for_the_block_only(champion, admission, files, monkeypatch):
    """How the champion gate scores a model in-process on its own landing zone's paths."""
    monkeypatch.delenv(SERVE_ROOT_ENV, raising=False)
    rows = pd.DataFrame([{**admission, "image_path": str(files["image"])}])
    with serve_inputs.reading_from(files["root"]):
        assert champion.predict(rows)["errors"].iloc[0] == []
    assert SERVE_ROOT_ENV not in os.environ
    assert len(champion.predict(rows)["errors"].iloc[0]) == 1


# --- over HTTP, as the README does it -------------------------------------------------------


def _readme_request(image: str, recording: Path) -> dict:
    """The README's curl body (a here-document), with its shell substitutions done."""
    text = (REPO / "README.md").read_text()
    (body,) = re.findall(r"--data-binary @- <<EOF\n(.*?)\nEOF\n", text, flags=re.S)
    body = body.replace('$(base64 -w0 "$RECORDING")', _b64(recording.read_bytes()))
    body = body.replace("$IMAGE", json.dumps(image)[1:-1])
    assert "$" not in body, body
    return json.loads(body)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _demo_layout(pipeline_run, base: Path) -> Path:
    """`make serve` expects make demo's layout: WORKDIR/run (the run), WORKDIR/landing."""
    (base / "run").symlink_to(pipeline_run["workdir"])
    (base / "landing").symlink_to(pipeline_run["landing"])
    return base


def _wait_until_up(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + SERVER_STARTUP_S
    while True:
        assert server.poll() is None, log.read_text()[-3000:]
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            return
        except OSError:
            assert time.monotonic() < deadline, "mlflow models serve did not answer"
            time.sleep(0.5)


def _post(port: int, payload: dict) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations",
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def test_make_serve_answers_the_readme_request(pipeline_run, tmp_path):
    """`make serve` (mlflow models serve, --env-manager local) on make demo's layout, and the
    README's request; plus a refused path in the same batch."""
    if shutil.which("make") is None:
        pytest.skip("no make on PATH")
    workdir, port = _demo_layout(pipeline_run, tmp_path), _free_port()
    index = pd.read_parquet(pipeline_run["workdir"] / "tables" / "dicom_index.parquet")
    audio = pd.read_parquet(pipeline_run["workdir"] / "tables" / "recording_index.parquet")
    payload = _readme_request(index["path"].iloc[0], workdir / "landing" / audio["path"].iloc[0])
    payload["dataframe_records"].append({"hadm_id": 2, "image_path": "/etc/passwd"})
    hadm_id, as_bytes = _test_admission_as_base64(pipeline_run)
    payload["dataframe_records"].append(as_bytes)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", SERVE_ROOT_ENV)}
    # A fresh shell's PATH: no venv on it (make serve must put it there for uvicorn).
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if Path(p) != Path(sys.executable).parent
    )
    command = ["make", "-s", "-C", str(REPO), "-o", "setup", "serve"]  # setup: `make test` did it
    command += [f"WORKDIR={workdir}", f"SERVE_PORT={port}"]
    log = tmp_path / "serve.log"
    with log.open("w") as sink:
        # Its own session: make, mlflow and uvicorn must all go at the end.
        server = subprocess.Popen(
            command, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_until_up(server, port, log)
        answer = _post(port, payload)
    finally:
        _stop(server)
    good, refused, sent_as_bytes = answer["predictions"]
    assert set(good) == set(refused) == set(OUTPUT_COLUMNS)
    # The admission sent with its film and recording as base64 scores as the pipeline scored it.
    predictions = pd.read_parquet(pipeline_run["report"]["predictions_path"])
    expected = predictions.set_index("hadm_id").loc[hadm_id, "p_fusion"]
    assert sent_as_bytes["errors"] == []
    assert sent_as_bytes["p_fusion"] == pytest.approx(expected, abs=1e-5)
    assert good["errors"] == [], log.read_text()[-3000:]
    assert 0.0 < good["p_fusion"] < 1.0 and 0.0 < refused["p_fusion"] < 1.0
    assert len(refused["errors"]) == 1 and refused["errors"][0].startswith("image_path")


def _test_admission_as_base64(pipeline_run) -> tuple[int, dict]:
    """A test admission as the pipeline's own serving rows give it, its film and recording sent
    as bytes (base64) rather than paths: one that has both when the tiny cohort holds one."""
    landing = pipeline_run["landing"]
    _, frame = test_split_requests(pipeline_run)
    both = frame["image_path"].notna() & frame["recording_path"].notna()
    row = frame[both].iloc[0] if both.any() else frame.iloc[0]
    record = {k: (None if pd.isna(v) else v) for k, v in row.items()}
    for kind in ("image", "recording"):
        path = record.pop(f"{kind}_path")
        if path is not None:
            record[f"{kind}_b64"] = _b64((landing / path).read_bytes())
    record = {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()}
    return int(row["hadm_id"]), record


def _stop(server: subprocess.Popen) -> None:
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def test_an_empty_request_gets_an_empty_answer(champion):
    out = champion.predict(pd.DataFrame({"hadm_id": pd.Series([], dtype="int64")}))
    assert list(out.columns) == OUTPUT_COLUMNS and len(out) == 0
    assert np.asarray(out["p_fusion"]).dtype == np.float64


# --- limits.max_request_mb ------------------------------------------------------------------

LIMIT_MB = 0.1  # small, so that a test request can exceed it


@pytest.fixture(scope="module")
def limited(pipeline_run, tmp_path_factory) -> mlflow.pyfunc.PyFuncModel:
    """The champion as a run with `limits: {max_request_mb: LIMIT_MB}` would have registered it:
    its own artifacts, with the stored settings.json saying so."""
    block = pipeline_run["report"]["mlflow"]
    store = MLflowResource(tracking_uri=block["tracking_uri"], workdir=str(pipeline_run["workdir"]))
    with store.activated():
        local = mlflow.artifacts.download_artifacts(
            f"models:/{block['model_name']}@champion", dst_path=str(tmp_path_factory.mktemp("m"))
        )
    stored = Path(local) / "artifacts" / "settings.json"
    settings = json.loads(stored.read_text())
    assert settings["limits"]["max_request_mb"] == 64.0  # the run's (default) value was stored
    settings["limits"]["max_request_mb"] = LIMIT_MB
    stored.write_text(json.dumps(settings))
    return mlflow.pyfunc.load_model(local)


def test_the_stored_request_limit_is_the_one_the_served_model_applies(champion, limited):
    assert champion.unwrap_python_model().settings.limits.max_request_mb == 64.0
    assert limited.unwrap_python_model().settings.limits.max_request_mb == LIMIT_MB


def test_an_input_over_the_request_limit_is_refused_and_the_rest_scored(
    limited, admission, files, opened
):
    oversize = _b64(bytes(int(LIMIT_MB * 2**20) + 1))  # refused before anything decodes it
    image = files["image"].read_bytes()
    rows = [
        {**admission, "recording_b64": oversize},
        admission,
        {**admission, "image_b64": _b64(image)},
    ]
    out = _score(limited, rows)
    assert out["errors"].iloc[0] == [
        f"recording_b64 was refused: it is larger than limits.max_request_mb = {LIMIT_MB:g} MB."
    ]
    assert out["p_fusion"].iloc[0] == pytest.approx(out["p_fusion"].iloc[1])  # as if missing
    assert out["errors"].iloc[1] == out["errors"].iloc[2] == []
    assert opened == [image]  # the film under the limit was read; the oversize input never


def test_a_request_over_the_limit_is_refused_whole_unless_the_pipeline_scores(
    limited, admission, files, opened
):
    """Every row says so and has no score; nothing is decoded. The promotion gate re-scoring
    its own cohort (inside reading_from) is no request and is scored as usual."""
    image = _b64(files["image"].read_bytes())
    count = math.ceil(LIMIT_MB * 2**20 / len(image)) + 1
    rows = pd.DataFrame([{**admission, "image_b64": image}] * count)
    out = limited.predict(rows)
    assert len(out) == count and out["p_fusion"].isna().all()
    (sentence,) = out["errors"].iloc[0]
    assert sentence.startswith("the request was refused") and f"= {LIMIT_MB:g} MB" in sentence
    assert all(errors == [sentence] for errors in out["errors"])
    assert opened == []
    with serve_inputs.reading_from(files["root"]):
        scored = _score(limited, rows.to_dict("records"))
    assert all(errors == [] for errors in scored["errors"])
    np.testing.assert_allclose(scored["p_fusion"], scored["p_fusion"].iloc[0])  # the same row

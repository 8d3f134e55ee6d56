"""The whole pipeline on a messy synthetic landing zone: contract, accounting, privacy, registry.

One real in-process Dagster run (SQLite instance, SQLite MLflow store) serves all tests here.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from clinfuse.assets.mlflow_resource import MLflowResource
from clinfuse.synthetic import truth_dir
from tests.conftest import PHI_MARKERS, load_champion, test_split_requests

pytestmark = pytest.mark.slow
COUNT_KEYS = {"seen", "ingested", "quarantined"}
EHR_TABLES = {"patients", "admissions", "labevents", "d_labitems", "diagnoses_icd"}
METRICS = {"auroc", "auprc", "accuracy", "recall", "f1", "brier", "ece"}


def test_report_has_exactly_the_contracted_shape(pipeline_run):
    report = pipeline_run["report"]
    assert set(report) == {
        "inputs",
        "quarantine",
        "cohort",
        "splits_path",
        "predictions_path",
        "metrics",
        "mlflow",
    }
    assert set(report["inputs"]) == {"dicom", "audio", "ehr", "note"}
    assert set(report["inputs"]["ehr"]) == EHR_TABLES
    counts = [report["inputs"][m] for m in ("dicom", "audio", "note")]
    counts += list(report["inputs"]["ehr"].values())
    for count in counts:
        assert set(count) - {"decoded"} == COUNT_KEYS
        assert count["seen"] == count["ingested"] + count["quarantined"]
    for modality in ("dicom", "audio"):
        files = report["inputs"][modality]
        # A first run decodes every file it can reach; a manifest row without a file is not one.
        assert 0 < files["decoded"] <= files["seen"]
        assert files["decoded"] >= files["ingested"]
    for row in report["quarantine"]:
        assert set(row) == {"modality", "source", "reason"}
        assert row["modality"] in {"ehr", "note", "dicom", "audio"}
        assert row["reason"] and not row["source"].startswith("/")
    cohort = report["cohort"]
    assert cohort["admissions"] == cohort["train"] + cohort["validation"] + cohort["test"]
    assert 0 < cohort["positives"] < cohort["admissions"]
    assert set(report["metrics"]) == {"fusion", "ehr", "text", "image", "audio"}
    assert set(report["metrics"]["fusion"]) == METRICS
    assert set(report["mlflow"]) == {"tracking_uri", "model_name", "version", "aliases", "run_id"}


def test_counts_are_taken_from_the_files(pipeline_run):
    landing, inputs = pipeline_run["landing"], pipeline_run["report"]["inputs"]
    dicom_files = [
        p for p in (landing / "dicom").rglob("*") if p.is_file() and p.name != "manifest.csv"
    ]
    assert inputs["dicom"]["seen"] == len(dicom_files)
    manifest = pd.read_csv(landing / "audio" / "manifest.csv", dtype=str)
    assert inputs["audio"]["seen"] == len(manifest)


def test_every_planted_bad_input_is_quarantined_with_its_reason(pipeline_run):
    expected = pd.read_csv(truth_dir(pipeline_run["landing"]) / "quarantine.csv", dtype=str)
    found = pd.DataFrame(pipeline_run["report"]["quarantine"])
    merged = expected.merge(found, on=["modality", "source"], how="left", suffixes=("", "_got"))
    missing = merged[merged["reason_got"].isna()]
    assert missing.empty, f"not quarantined: {missing.to_dict('records')}"
    wrong = merged[~merged.apply(lambda r: r["reason_got"].startswith(r["reason"]), axis=1)]
    assert wrong.empty, f"wrong reason: {wrong.to_dict('records')}"
    # ... and nothing good was quarantined
    extra = found.merge(expected, on=["modality", "source"], how="left", indicator=True)
    assert (extra["_merge"] == "both").all(), extra[extra["_merge"] != "both"].to_dict("records")


def test_splits_and_predictions_files(pipeline_run):
    report, workdir = pipeline_run["report"], pipeline_run["workdir"]
    splits = pd.read_parquet(workdir / report["splits_path"])
    assert list(splits.columns) == ["hadm_id", "subject_id", "split", "label"]
    assert splits["hadm_id"].is_unique
    assert splits.groupby("subject_id")["split"].nunique().max() == 1
    predictions = pd.read_parquet(workdir / report["predictions_path"])
    assert list(predictions.columns) == [
        "hadm_id",
        "subject_id",
        "label",
        "p_fusion",
        "p_ehr",
        "p_text",
        "p_image",
        "p_audio",
    ]
    test_ids = set(splits.loc[splits["split"] == "test", "hadm_id"])
    assert set(predictions["hadm_id"]) == test_ids
    assert predictions["p_fusion"].between(0, 1).all()


def test_no_identifying_dicom_attribute_is_persisted_anywhere(pipeline_run):
    markers = [v.encode() for v in PHI_MARKERS.values()]
    markers += [v.split("^")[0].encode() for v in PHI_MARKERS.values() if "^" in v]
    leaks = []
    for path in Path(pipeline_run["workdir"]).rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            leaks += [(str(path), m.decode()) for m in markers if m in content]
    assert leaks == []


def test_the_first_version_is_registered_and_becomes_champion(pipeline_run):
    block = pipeline_run["report"]["mlflow"]
    assert block["model_name"] == "clinfuse-pneumonia"
    assert block["version"] == "1"
    assert set(block["aliases"]) == {"champion", "challenger"}
    client = mlflow.MlflowClient(block["tracking_uri"])
    version = client.get_model_version(block["model_name"], "1")
    assert version.run_id == block["run_id"]
    assert version.tags["promotion.decision"] == "promoted"
    assert "dagster.run_id" in version.tags and "landing.fingerprint" in version.tags
    artifacts = {a.path for a in client.list_artifacts(block["run_id"], "evaluation")}
    for name in ("roc.png", "pr.png", "calibration.png", "confusion.png", "model_card.md"):
        assert f"evaluation/{name}" in artifacts


def test_the_version_page_shows_the_card_the_datasets_and_an_example(pipeline_run):
    """What a user sees in MLflow: the model card as the version's description, the cohort
    splits as the run's datasets (digest, schema, counts; no rows), a made-up input example."""
    block = pipeline_run["report"]["mlflow"]
    client = mlflow.MlflowClient(block["tracking_uri"])
    version = client.get_model_version(block["model_name"], block["version"])
    assert version.description.startswith(f"# Model card: {block['model_name']} v1")
    cohort = pd.read_parquet(pipeline_run["workdir"] / "tables" / "cohort.parquet")
    inputs = client.get_run(block["run_id"]).inputs.dataset_inputs
    found = {i.dataset.name: i for i in inputs}
    assert set(found) == {f"pneumonia-{s}" for s in ("train", "validation", "test")}
    for split, context in (("train", "training"), ("validation", "validation"), ("test", "test")):
        logged = found[f"pneumonia-{split}"]
        assert {t.key: t.value for t in logged.tags}["mlflow.data.context"] == context
        assert json.loads(logged.dataset.profile)["num_rows"] == int((cohort.split == split).sum())
        columns = {c["name"] for c in json.loads(logged.dataset.schema)["mlflow_colspec"]}
        assert {"hadm_id", "label"} <= columns and "admittime" not in columns
        assert logged.dataset.digest
    with MLflowResource(workdir=str(pipeline_run["workdir"])).activated():
        info = mlflow.models.get_model_info(f"models:/{block['model_name']}/1")
        example = mlflow.models.Model.load(info.model_uri).load_input_example(
            mlflow.artifacts.download_artifacts(info.model_uri)
        )
    assert len(example) == 1 and not set(example["hadm_id"]) & set(cohort["hadm_id"])


def test_each_modality_is_a_nested_run_with_its_learner(pipeline_run):
    block = pipeline_run["report"]["mlflow"]
    client = mlflow.MlflowClient(block["tracking_uri"])
    experiment = client.get_experiment_by_name("clinfuse")
    (parent,) = client.search_runs(
        [experiment.experiment_id], "tags.`dagster.asset` = 'modality_models'"
    )
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    chosen = {k.removeprefix("chosen."): v for k, v in parent.data.params.items() if "chosen." in k}
    assert {c.data.tags["clinfuse.modality"] for c in children} == set(chosen)
    for child in children:
        modality = child.data.tags["clinfuse.modality"]
        assert child.data.params["chosen"] == chosen[modality]
        assert "chosen.val_logloss" in child.data.metrics
        learner = client.list_artifacts(child.info.run_id, "learner")
        assert [a.path for a in learner] == [f"learner/{modality}.joblib"]


def test_table_assets_carry_row_counts_and_column_schemas(pipeline_run):
    import dagster as dg

    from clinfuse.orchestration.runner import dagster_instance

    workdir = pipeline_run["workdir"]
    with dagster_instance(workdir) as instance:
        for asset in ("cohort", "admissions", "labevents", "lab_features", "dicom_index"):
            event = instance.get_latest_materialization_event(dg.AssetKey(asset))
            metadata = event.asset_materialization.metadata
            stored = pd.read_parquet(workdir / "tables" / f"{asset}.parquet")
            assert metadata["dagster/row_count"].value == len(stored), asset
            schema = metadata["dagster/column_schema"].value
            assert [c.name for c in schema.columns] == list(stored.columns), asset


def test_every_candidate_learner_and_the_choice_are_in_mlflow(pipeline_run):
    from clinfuse.models.learners import candidates
    from clinfuse.models.training import TrainConfig

    block = pipeline_run["report"]["mlflow"]
    client = mlflow.MlflowClient(block["tracking_uri"])
    experiment = client.get_experiment_by_name("clinfuse")
    (run,) = client.search_runs(
        [experiment.experiment_id], "tags.`dagster.asset` = 'modality_models'"
    )
    chosen = {k.removeprefix("chosen."): v for k, v in run.data.params.items() if "chosen." in k}
    assert {"ehr", "text"} <= set(chosen)
    stored = json.loads((pipeline_run["workdir"] / "tables" / "modality_models.json").read_text())
    for modality, name in chosen.items():
        names = [make().name for make in candidates(modality, TrainConfig(), 0)]
        assert name in names
        for candidate in names:
            assert f"{candidate}.val_logloss" in run.data.metrics
        assert stored["modalities"][modality]["chosen"] == name
        scores = stored["modalities"][modality]["candidates"]
        best = min(s["val_logloss"] for s in scores.values())
        assert scores[name]["val_logloss"] <= best + 1e-3  # the choice is the best (or a tie)


def test_the_champion_pyfunc_reproduces_the_pipeline_probabilities(pipeline_run, monkeypatch):
    from clinfuse.assets.evaluation.serve_inputs import SERVE_ROOT_ENV

    # serving_frame's paths are in the landing zone: serve it, as the champion gate does.
    monkeypatch.setenv(SERVE_ROOT_ENV, str(pipeline_run["landing"]))

    test, frame = test_split_requests(pipeline_run)
    served = load_champion(pipeline_run).predict(frame)
    assert (served["errors"].map(len) == 0).all(), served["errors"].tolist()
    served = served["p_fusion"].to_numpy(dtype=float)
    workdir = pipeline_run["workdir"]
    expected = pd.read_parquet(workdir / pipeline_run["report"]["predictions_path"])
    expected = expected.set_index("hadm_id").loc[test["hadm_id"], "p_fusion"].to_numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_the_gate_scores_the_champion_block_by_block(pipeline_run, monkeypatch):
    """The promotion gate's requests, built a few admissions at a time from window_labs and the
    notes file, are the requests built at once from labevents, and score the same."""
    from clinfuse.assets.evaluation.registry_assets import champion_metrics_now
    from clinfuse.assets.evaluation.serve_inputs import SERVE_ROOT_ENV
    from clinfuse.assets.evaluation.serving import serving_frame, serving_frames
    from clinfuse.assets.settings import Settings

    monkeypatch.setenv(SERVE_ROOT_ENV, str(pipeline_run["landing"]))
    tables = pipeline_run["workdir"] / "tables"
    cohort = pd.read_parquet(tables / "cohort.parquet")
    chosen = cohort[cohort["split"].isin(("validation", "test"))].reset_index(drop=True)
    indexes = [pd.read_parquet(tables / f"{n}.parquet") for n in ("dicom_index", "recording_index")]
    hours, landing = Settings().window_hours, pipeline_run["landing"]

    notes = tables / "notes.parquet"
    whole = serving_frame(chosen, tables / "labevents.parquet", notes, *indexes, landing, hours)
    scratch = pipeline_run["workdir"] / "tmp"
    scratch.mkdir(exist_ok=True)
    blocks = list(
        serving_frames(
            chosen, tables / "window_labs.parquet", notes, *indexes, landing, hours, scratch, 7
        )
    )
    assert not list(scratch.glob("serving-*"))  # the gate's scratch file is gone once read
    assert len(blocks) > 2 and whole["labs"].notna().any() and whole["notes"].notna().any()
    pd.testing.assert_frame_equal(pd.concat(blocks, ignore_index=True), whole)
    block = pipeline_run["report"]["mlflow"]
    store = MLflowResource(tracking_uri=block["tracking_uri"], workdir=str(pipeline_run["workdir"]))
    uri = f"models:/{block['model_name']}@champion"
    with store.activated():
        # Equal up to float32 batching (a network's sums depend on the batch it is in).
        blockwise = champion_metrics_now(uri, chosen, iter(blocks))
        assert blockwise == pytest.approx(champion_metrics_now(uri, chosen, [whole]), rel=1e-6)
        with pytest.raises(ValueError, match="served probabilities for"):
            champion_metrics_now(uri, chosen, blocks[:1])


def test_report_json_is_plain_json(pipeline_run):
    text = (pipeline_run["workdir"] / "report.json").read_text()
    assert "NaN" not in text
    json.loads(text)


def test_the_readme_block_is_what_the_demo_prints(pipeline_run):
    """`make readme` writes the demo's printed lines between the README's markers and nothing
    else: the README's table is a command's output, not a hand-kept copy."""
    from clinfuse.orchestration.demo import replace_readme_block, results_table, summary_lines

    report = pipeline_run["report"]
    table = results_table(report, truth_dir(pipeline_run["landing"]))
    lines = summary_lines(report, table, pipeline_run["workdir"], 12.0)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    written = replace_readme_block(readme, lines)
    begin, end = written.index("<!-- demo output"), written.index("<!-- end of demo output -->")
    assert written[:begin] == readme[: readme.index("<!-- demo output")]
    assert written[end:] == readme[readme.index("<!-- end of demo output -->") :]
    block = written[begin:end].splitlines()
    assert block[2:-1] == lines and lines[1].split()[0] == "fusion"
    assert f"quarantined inputs: {len(report['quarantine'])}" in block
    with pytest.raises(ValueError, match="no demo markers"):
        replace_readme_block("no markers here", lines)

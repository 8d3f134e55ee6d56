"""The registry helpers and the promotion gate against a real MLflow (SQLite store in tmp).

One store for the module: MLflow's SQLite migrations take seconds, so the tiny models are
logged once and each test registers them under its own model name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import mlflow
import pytest
from mlflow import MlflowClient

from clinfuse.assets.evaluation.registry import (
    CHALLENGER,
    CHAMPION,
    champion_version,
    decide_promotion,
    promote,
    register_version,
)

# MLflow's own SQL store still uses a deprecated SQLAlchemy loader: noise, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")

GOOD = {"auroc": 0.80, "ece": 0.05}
EQUAL = {"auroc": 0.80, "ece": 0.05}
WORSE = {"auroc": 0.50, "ece": 0.05}


class Doubler(mlflow.pyfunc.PythonModel):
    """Stands in for the clinfuse pyfunc: any logged model will do for the registry."""

    def predict(self, context, model_input: list[float], params=None) -> list[float]:
        return [2 * x for x in model_input]


@dataclass(frozen=True)
class Logged:
    run_id: str
    model_uri: str  # models:/m-<id>


@dataclass(frozen=True)
class Store:
    client: MlflowClient
    logged: list[Logged]
    plain_run_id: str  # a run with a plain artifact directory "plain", no logged model


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    # log_model is fluent-only, so the global URI must point at the test store for a while.
    mlflow.set_tracking_uri(uri)
    try:
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = client.create_experiment("registry", artifact_location=str(root / "art"))
        logged = []
        for _ in range(3):
            with mlflow.start_run(experiment_id=experiment) as run:
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=Doubler(), pip_requirements=[]
                )
            logged.append(Logged(run.info.run_id, info.model_uri))
        plain = client.create_run(experiment)
        client.log_text(plain.info.run_id, "not a model", "plain/README.txt")
        client.set_terminated(plain.info.run_id)
        yield Store(client, logged, plain.info.run_id)
    finally:
        mlflow.set_tracking_uri(previous)  # None unsets it again


def _aliases(client: MlflowClient, name: str) -> dict[str, str]:
    return {alias: str(v) for alias, v in client.get_registered_model(name).aliases.items()}


def _tags(client: MlflowClient, name: str, version: str) -> dict[str, str]:
    return client.get_model_version(name, version).tags


# --- against MLflow --------------------------------------------------------------------------


def test_champion_challenger_lifecycle(store):
    client, name = store.client, "lifecycle"
    assert champion_version(client, name) is None  # no model yet

    # First version: registered as challenger, promoted because there is no champion.
    first = register_version(
        client, name, store.logged[0].run_id, store.logged[0].model_uri, {"git_sha": "abc"}
    )
    # ModelVersion.version is an int from the SQL store (a str over REST): compare as str
    assert (str(first.version), first.status, first.aliases) == ("1", "READY", [CHALLENGER])
    assert first.tags["git_sha"] == "abc" and first.run_id == store.logged[0].run_id
    decision = promote(client, name, "1", GOOD, None)
    assert decision.promoted and not decision.forced and decision.champion_before is None
    assert _aliases(client, name) == {CHAMPION: "1", CHALLENGER: "1"}
    assert str(champion_version(client, name).version) == "1"

    # Second version, equally good (by the logged model's name in the run): takes over.
    second = register_version(client, name, store.logged[1].run_id, "model", {})
    assert str(second.version) == "2" and second.source == store.logged[1].model_uri
    assert _aliases(client, name) == {CHAMPION: "1", CHALLENGER: "2"}
    decision = promote(client, name, "2", EQUAL, GOOD)
    assert decision.promoted and decision.champion_before == "1"
    assert _aliases(client, name) == {CHAMPION: "2", CHALLENGER: "2"}
    assert _tags(client, name, "1")["promotion.superseded_by"] == "2"
    tags = _tags(client, name, "2")
    assert tags["promotion.decision"] == "promoted" and tags["promotion.forced"] == "false"
    assert tags["promotion.champion_before"] == "1" and tags["promotion.auroc_champion"] == "0.8"

    # A clearly worse third version (runs:/ URI) is refused; the champion stays.
    run_uri = f"runs:/{store.logged[2].run_id}/model"
    register_version(client, name, store.logged[2].run_id, run_uri, {})
    decision = promote(client, name, "3", WORSE, GOOD)
    assert not decision.promoted and "AUROC 0.5000 < champion 0.8000" in decision.reason
    assert decision.numbers["auroc_challenger"] == 0.5
    assert _aliases(client, name) == {CHAMPION: "2", CHALLENGER: "3"}
    tags = _tags(client, name, "3")
    assert tags["promotion.decision"] == "refused" and tags["promotion.auroc_challenger"] == "0.5"
    assert "promotion.superseded_by" not in _tags(client, name, "2")

    # Forced: it moves, and says so.
    decision = promote(client, name, "3", WORSE, GOOD, force=True, force_note="alice: drill")
    assert decision.promoted and decision.forced and decision.reason.startswith("forced")
    assert _aliases(client, name) == {CHAMPION: "3", CHALLENGER: "3"}
    tags = _tags(client, name, "3")
    assert tags["promotion.forced"] == "true" and tags["promotion.force_note"] == "alice: drill"
    assert tags["promotion.decision"] == "promoted"
    assert _tags(client, name, "2")["promotion.superseded_by"] == "3"

    # The alias serves the model.
    served = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    assert served.metadata.run_id == store.logged[2].run_id
    assert served.predict([1.0, 2.5]) == [2.0, 5.0]


def test_refuses_without_champion_numbers(store):
    client, name = store.client, "guarded"
    for logged in store.logged[:2]:
        register_version(client, name, logged.run_id, logged.model_uri, {})
    promote(client, name, "1", GOOD, None)
    decision = promote(client, name, "2", GOOD, None)  # caller forgot the champion's numbers
    assert not decision.promoted and "no champion metrics" in decision.reason
    assert _aliases(client, name) == {CHAMPION: "1", CHALLENGER: "2"}
    again = promote(client, name, "1", GOOD, None)  # re-deciding on the champion itself
    assert again.promoted and again.reason == "already the champion"
    assert "promotion.superseded_by" not in _tags(client, name, "1")


def test_force_that_was_not_needed_is_not_recorded_as_forced(store):
    client, name = store.client, "unneeded-force"
    register_version(client, name, store.logged[0].run_id, store.logged[0].model_uri, {})
    decision = promote(client, name, "1", GOOD, None, force=True, force_note="bob")
    assert decision.promoted and not decision.forced and "not needed" in decision.reason
    assert _tags(client, name, "1")["promotion.force_note"] == "bob"


def test_plain_artifact_directory_and_unknown_model(store):
    client = store.client
    version = register_version(client, "plain", store.plain_run_id, "plain", {"kind": "dir"})
    assert version.source.endswith("/plain") and version.aliases == [CHALLENGER]
    assert champion_version(client, "no-such-model") is None


# --- the pure gate ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("challenger", "champion", "promoted"),
    [
        ({"auroc": 0.6, "ece": 0.3}, None, True),  # no champion
        ({"auroc": 0.79, "ece": 0.07}, GOOD, True),  # both exactly at the tolerance
        ({"auroc": 0.7899, "ece": 0.05}, GOOD, False),  # AUROC just below
        ({"auroc": 0.90, "ece": 0.0701}, GOOD, False),  # better AUROC, ECE just too high
        ({"auroc": None, "ece": 0.05}, GOOD, False),  # undefined (one class)
        ({"auroc": float("nan"), "ece": 0.05}, None, False),
        ({"auroc": 0.8, "ece": 0.05}, {"auroc": None, "ece": 0.05}, False),
    ],
)
def test_gate(challenger, champion, promoted):
    verdict = decide_promotion(challenger, champion)
    assert verdict.promote is promoted, verdict.reason
    assert verdict.numbers["auroc_tolerance"] == 0.01 and verdict.numbers["ece_tolerance"] == 0.02


def test_gate_tolerances_are_parameters():
    assert decide_promotion({"auroc": 0.75, "ece": 0.05}, GOOD, auroc_tolerance=0.05).promote
    assert not decide_promotion({"auroc": 0.80, "ece": 0.06}, GOOD, ece_tolerance=0.0).promote


def test_a_password_in_the_tracking_uri_never_reaches_the_report():
    from clinfuse.assets.evaluation.registry_assets import without_password

    assert without_password("postgresql://u:s3cret@db:5432/mlflow") == (
        "postgresql://u:***@db:5432/mlflow"
    )
    for plain in ("sqlite:////w/mlflow.db", "postgresql://u@db/mlflow", "http://127.0.0.1:5000"):
        assert without_password(plain) == plain

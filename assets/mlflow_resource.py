"""MLflow as a Dagster resource: tracking URI, artifact root, experiment.

No credentials here. A tracking server with authentication takes them from the environment of
every clinfuse process, where MLflow's client reads them itself: MLFLOW_TRACKING_USERNAME and
MLFLOW_TRACKING_PASSWORD (basic auth) or MLFLOW_TRACKING_TOKEN (docs/deploy.md). Dagster shows
a resource's configuration in its UI and stores it with every run, so a URI that carries a
password (a database URI) never goes into `tracking_uri` as text: it comes through
$MLFLOW_TRACKING_URI (read when `tracking_uri` is empty, the default), or as
`dg.EnvVar("MLFLOW_TRACKING_URI")`, which Dagster records by name only. tests/test_crashes.py
checks that no tracked file holds a secret.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field

SERVER_SCHEMES = ("http", "https", "databricks")


class MLflowResource(dg.ConfigurableResource):
    """Tracking and registry. Defaults to SQLite under the work directory (embedded mode).

    `MLFLOW_TRACKING_URI` in the environment wins over the default, as cli-and-report.md says.
    """

    tracking_uri: str = Field(default="", description="Empty: $MLFLOW_TRACKING_URI or SQLite.")
    workdir: str = Field(description="Where the default SQLite store and artifacts live.")
    experiment: str = "clinfuse"
    artifact_location: str = Field(
        default="",
        description=(
            "Where a new experiment keeps its artifacts (file:/..., s3://...). Empty: "
            "<workdir>/mlartifacts with a database store, the tracking server's own with a server."
        ),
    )

    @property
    def uri(self) -> str:
        if self.tracking_uri:
            return self.tracking_uri
        if os.environ.get("MLFLOW_TRACKING_URI"):
            return os.environ["MLFLOW_TRACKING_URI"]
        return f"sqlite:///{Path(self.workdir).resolve() / 'mlflow.db'}"

    @property
    def artifact_root(self) -> str:
        return (Path(self.workdir).resolve() / "mlartifacts").as_uri()

    def _default_artifacts(self) -> str | None:
        # A database store (SQLite, Postgres, ...) has no artifact root of its own: MLflow would
        # fall back to ./mlruns wherever the process started. A server decides for itself.
        scheme = self.uri.split(":", 1)[0].lower()
        return None if scheme in SERVER_SCHEMES else self.artifact_root

    def client(self):
        from mlflow import MlflowClient

        self._create_default_store()
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def _create_default_store(self) -> None:
        """The embedded SQLite store, created whole or not at all.

        MLflow creates its schema by running its migrations in place; a run killed meanwhile
        leaves a database that no later run can migrate (`_alembic_tmp_experiments already
        exists`). So the schema is built under a temporary name and renamed into place.
        """
        if self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"):
            return
        database = Path(self.workdir).resolve() / "mlflow.db"
        if database.exists():
            return
        from mlflow import MlflowClient

        database.parent.mkdir(parents=True, exist_ok=True)
        building = database.with_name(f".mlflow.db.{os.getpid()}.building")
        building.unlink(missing_ok=True)
        uri = f"sqlite:///{building}"
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments()  # the tracking schema
        client.search_registered_models()  # and the registry's
        os.replace(building, database)

    @contextmanager
    def activated(self) -> Iterator[None]:
        """MLflow's fluent API (start_run, log_model, models:/ URIs) pointed at this store.

        mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into the environment; both are
        put back afterwards, so a second pipeline in the same process (another work directory)
        never writes into this one's store.
        """
        import mlflow

        self._create_default_store()
        uri = self.uri
        saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            mlflow.set_tracking_uri(saved["MLFLOW_TRACKING_URI"])
            mlflow.set_registry_uri(saved["MLFLOW_REGISTRY_URI"])

    def experiment_id(self) -> str:
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = self.artifact_location or self._default_artifacts()
        return client.create_experiment(self.experiment, artifact_location=location)

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str]) -> Iterator[object]:
        import mlflow

        experiment_id = self.experiment_id()
        with (
            self.activated(),
            mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run,
        ):
            yield run

    @contextmanager
    def resume_run(self, run_id: str) -> Iterator[object]:
        """Logs more (evaluation, the model) into an earlier run."""
        import mlflow

        with self.activated(), mlflow.start_run(run_id=run_id) as run:
            yield run

    def ui_url(self, run_id: str, host: str = "http://127.0.0.1:5000") -> str:
        return f"{host}/#/experiments/{self.experiment_id()}/runs/{run_id}"

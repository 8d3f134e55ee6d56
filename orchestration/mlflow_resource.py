"""MLflow as a Dagster resource: tracking URI, artifact root, experiment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
from pydantic import Field


class MLflowResource(dg.ConfigurableResource):
    """Tracking and registry. Defaults to SQLite under the work directory (embedded mode).

    `MLFLOW_TRACKING_URI` in the environment wins over the default, as cli-and-report.md says.
    """

    tracking_uri: str = Field(default="", description="Empty: $MLFLOW_TRACKING_URI or SQLite.")
    workdir: str = Field(description="Where the default SQLite store and artifacts live.")
    experiment: str = "clinfuse"

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

    def client(self):
        import mlflow

        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return mlflow.MlflowClient(self.uri)

    def experiment_id(self) -> str:
        client = self.client()
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        location = self.artifact_root if self.uri.startswith("sqlite:") else None
        return client.create_experiment(self.experiment, artifact_location=location)

    @contextmanager
    def start_run(self, run_name: str, tags: dict[str, str]) -> Iterator[object]:
        import mlflow

        experiment_id = self.experiment_id()
        with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
            yield run

    def ui_url(self, run_id: str, host: str = "http://127.0.0.1:5000") -> str:
        return f"{host}/#/experiments/{self.experiment_id()}/runs/{run_id}"

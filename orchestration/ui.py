"""`clinfuse ui` / `make ui`: Dagster's and MLflow's web UIs over one work directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

DAGSTER_PORT = 3000
MLFLOW_PORT = 5000


def ui_environment(workdir: Path, landing: Path) -> dict[str, str]:
    return {
        **os.environ,
        "CLINFUSE_WORKDIR": str(workdir),
        "CLINFUSE_LANDING": str(landing),
        "DAGSTER_HOME": os.environ.get("DAGSTER_HOME", str(workdir / "dagster_home")),
    }


def serve_both(workdir: Path, landing: Path | None = None) -> int:
    """Runs `dagster dev` and `mlflow ui` on 127.0.0.1 until interrupted."""
    workdir = workdir.resolve()
    landing = (landing or workdir.parent / "landing").resolve()
    env = ui_environment(workdir, landing)
    Path(env["DAGSTER_HOME"]).mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent
    workspace = Path(__file__).resolve().parents[1] / "workspace.yaml"
    dagster = [str(bin_dir / "dagster"), "dev", "-h", "127.0.0.1", "-p", str(DAGSTER_PORT)]
    if workspace.exists():
        dagster += ["-w", str(workspace)]
    else:
        dagster += ["-m", "clinfuse.orchestration.definitions"]
    mlflow = [
        str(bin_dir / "mlflow"),
        "ui",
        "--host",
        "127.0.0.1",
        "--port",
        str(MLFLOW_PORT),
        "--backend-store-uri",
        f"sqlite:///{workdir / 'mlflow.db'}",
    ]
    print(f"Dagster: http://127.0.0.1:{DAGSTER_PORT}   MLflow: http://127.0.0.1:{MLFLOW_PORT}")
    processes = [subprocess.Popen(dagster, env=env), subprocess.Popen(mlflow, env=env)]
    try:
        return processes[0].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in processes:
            process.terminate()

"""The whole pipeline on PostgreSQL: Dagster's storage (dagster-postgres) and MLflow's store.

The test starts its own server (initdb in a temp folder, a free loopback port, stopped at the
end) with the configuration docs/deploy.md shows: `storage: postgres` in $DAGSTER_HOME's
dagster.yaml with the password from the environment, and a password-free
MLFLOW_TRACKING_URI=postgresql://... with libpq's PGPASSWORD. It needs the server binaries
(Debian's `postgresql`, installed by .ci/run) and the `postgres` extra (in `dev`).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import TINY_TRAINING

pytestmark = pytest.mark.slow
PG_BINARIES = ("initdb", "pg_ctl", "postgres")
USER = "clinfuse"
EXTRA = "the `postgres` extra: pip install -e '.[postgres]'"


def _pg_bindir() -> Path | None:
    """The folder with initdb, pg_ctl and postgres: PATH first, then Debian's versioned dirs."""
    candidates = []
    if found := shutil.which("pg_ctl"):
        candidates.append(Path(found).resolve().parent)  # /usr/local/bin links into Debian's
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates += sorted(versions, key=lambda p: int(p.parent.name), reverse=True)  # newest
    for folder in candidates:
        if all((folder / name).is_file() for name in PG_BINARIES):
            return folder
    return None


def _server_account() -> pwd.struct_passwd | None:
    """Who runs the server: us, or Debian's `postgres` account when we are root (CI), since
    initdb and postgres refuse to run as root. None when root has no such account."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass(frozen=True)
class PgServer:
    bindir: Path
    base: Path  # data/, the socket and the log; readable by the server's account only
    account: pwd.struct_passwd
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.base / "data"

    def url(self, db: str) -> str:
        """No password in it: libpq takes it from PGPASSWORD, so no report or log shows it."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{db}"

    def pg(self, *args: str) -> subprocess.CompletedProcess[str]:
        as_root = os.geteuid() == 0
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            cwd=self.base,  # one the server's account may enter (root's cwd may be closed)
            user=self.account.pw_uid if as_root else None,
            group=self.account.pw_gid if as_root else None,
            extra_groups=[] if as_root else None,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def query(self, db: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        import psycopg2

        with closing(psycopg2.connect(self.url(db), password=self.password)) as conn:
            conn.autocommit = True  # also lets CREATE DATABASE run (never in a transaction)
            with conn.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []


def _checked(result: subprocess.CompletedProcess[str], server: PgServer) -> None:
    if result.returncode != 0:
        log = server.base / "server.log"
        tail = log.read_text()[-2000:] if log.exists() else ""
        pytest.fail(f"{result.args[0]} failed:\n{result.stdout}{result.stderr}\n{tail}")


def _initdb(server: PgServer) -> None:
    pwfile = server.base / "pwfile"
    pwfile.write_text(server.password + "\n")
    os.chown(pwfile, server.account.pw_uid, server.account.pw_gid)
    # scram on TCP, as a real server would ask; -N: no fsync for a throwaway cluster
    args = ["initdb", "-D", str(server.data), "-U", USER, f"--pwfile={pwfile}", "-N"]
    _checked(server.pg(*args, "-E", "UTF8", "--auth-host=scram-sha-256"), server)
    pwfile.unlink()


def _start(server: PgServer) -> None:
    options = f"-p {server.port} -k {server.base} -h 127.0.0.1 -F"  # -F: fsync off
    log = str(server.base / "server.log")
    _checked(
        server.pg("pg_ctl", "-D", str(server.data), "-l", log, "-w", "-o", options, "start"), server
    )


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgServer]:
    """A PostgreSQL server of our own with empty `dagster` and `mlflow` databases."""
    pytest.importorskip("psycopg2", reason=f"psycopg2 missing; needs {EXTRA}")
    pytest.importorskip("dagster_postgres", reason=f"dagster-postgres missing; needs {EXTRA}")
    bindir, account = _pg_bindir(), _server_account()
    if bindir is None:
        pytest.skip(
            "no PostgreSQL server binaries (initdb, pg_ctl, postgres) on PATH or in "
            "/usr/lib/postgresql/*/bin: apt-get install postgresql"
        )
    if account is None:
        pytest.skip("running as root and there is no `postgres` account to run the server")
    # Not under pytest's tmp_path: that is private to us, and the server may run as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="clinfuse-pg-"))
    os.chown(base, account.pw_uid, account.pw_gid)
    server = PgServer(bindir, base, account, _free_port(), secrets.token_hex(16))
    try:
        _initdb(server)
        _start(server)
        _create_databases(server)
        yield server
    finally:
        if (server.data / "postmaster.pid").exists():
            server.pg("pg_ctl", "-D", str(server.data), "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


def _create_databases(server: PgServer) -> None:
    for db in ("dagster", "mlflow"):
        server.query("postgres", f"CREATE DATABASE {db}")


def _dagster_yaml(server: PgServer) -> str:
    """The `storage: postgres` block of docs/deploy.md; the password stays an env reference."""
    db = {
        "hostname": "127.0.0.1",
        "port": server.port,
        "username": USER,
        "password": {"env": "DAGSTER_PG_PASSWORD"},
        "db_name": "dagster",
    }
    return yaml.safe_dump({"storage": {"postgres": {"postgres_db": db}}}, sort_keys=False)


@pytest.fixture(scope="module")
def postgres_run(postgres, landing, tmp_path_factory) -> Iterator[dict[str, Any]]:
    """One `clinfuse run` with both stores on the server; the environment stays set for the
    assertions (MlflowClient, DagsterInstance.get())."""
    from clinfuse.orchestration.runner import run_pipeline

    home = tmp_path_factory.mktemp("pg-dagster-home")
    (home / "dagster.yaml").write_text(_dagster_yaml(postgres))
    workdir = tmp_path_factory.mktemp("pg-work")
    uri = postgres.url("mlflow")
    with pytest.MonkeyPatch.context() as env:  # conftest pops these for the session
        env.setenv("DAGSTER_HOME", str(home))
        env.setenv("DAGSTER_PG_PASSWORD", postgres.password)
        env.setenv("PGPASSWORD", postgres.password)
        env.setenv("MLFLOW_TRACKING_URI", uri)
        # From a folder of its own: an artifact MLflow left at ./mlruns would show up there.
        env.chdir(tmp_path_factory.mktemp("pg-cwd"))
        report = run_pipeline(landing, workdir, workers=2, training=TINY_TRAINING)
        yield {"report": report, "workdir": workdir, "uri": uri, "server": postgres}


def test_postgresql_urls_use_psycopg2():
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3: without it installed no connection is
    made (ModuleNotFoundError), with it dagster-postgres fails at a run's first event
    (`NOTIFY run_events, %(notify_id)s`). The `postgres` extra pins SQLAlchemy below 2.1."""
    pytest.importorskip("dagster_postgres", reason=f"dagster-postgres missing; needs {EXTRA}")
    from sqlalchemy.engine import make_url

    assert make_url("postgresql://u@h/db").get_dialect().driver == "psycopg2"


def test_run_and_its_events_are_in_postgres(postgres_run):
    import dagster as dg
    from dagster_postgres import (
        PostgresEventLogStorage,
        PostgresRunStorage,
        PostgresScheduleStorage,
    )

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        instance_runs = [run.run_id for run in instance.get_runs()]
    server = postgres_run["server"]
    runs = server.query("dagster", "SELECT run_id, pipeline_name, status FROM runs")
    assert [(name, status) for _, name, status in runs] == [("full_pipeline", "SUCCESS")]
    events = server.query(
        "dagster",
        "SELECT dagster_event_type, count(*) FROM event_logs WHERE run_id = %s GROUP BY 1",
        runs[0][0],
    )
    counts = dict(events)
    # the enum's values, not its names: RUN_SUCCESS is stored as "PIPELINE_SUCCESS"
    assert counts[dg.DagsterEventType.RUN_SUCCESS.value] == 1
    assert counts[dg.DagsterEventType.ASSET_MATERIALIZATION.value] > 0
    assert instance_runs == [runs[0][0]]


def test_champion_is_registered_in_postgres(postgres_run, tmp_path):
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts

    block, uri = postgres_run["report"]["mlflow"], postgres_run["uri"]
    assert block["tracking_uri"] == uri
    assert "champion" in block["aliases"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = client.get_model_version_by_alias(block["model_name"], "champion")
    assert (str(champion.version), champion.run_id) == (block["version"], block["run_id"])
    rows = postgres_run["server"].query(
        "mlflow",
        "SELECT version FROM registered_model_aliases WHERE name = %s AND alias = %s",
        block["model_name"],
        "champion",
    )
    assert rows == [(int(block["version"]),)]
    # the alias resolves through the Postgres registry to the model's files
    model = download_artifacts(f"models:/{block['model_name']}@champion", dst_path=str(tmp_path))
    assert (Path(model) / "MLmodel").is_file()
    # A database store has no artifact root of its own: the files are under the workdir.
    experiment = client.get_experiment_by_name("clinfuse")
    assert experiment.artifact_location == (postgres_run["workdir"] / "mlartifacts").as_uri()
    assert any((postgres_run["workdir"] / "mlartifacts").rglob("MLmodel"))


def test_the_password_is_in_no_report_and_no_run_record(postgres_run):
    server, workdir = postgres_run["server"], postgres_run["workdir"]
    assert server.password not in (workdir / "report.json").read_text()
    like = f"%{server.password}%"
    for table, column in (("runs", "run_body"), ("event_logs", "event")):
        sql = f"SELECT count(*) FROM {table} WHERE {column} LIKE %s"
        assert server.query("dagster", sql, like) == [(0,)], table

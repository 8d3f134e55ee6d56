"""The full pipeline on Dagster's Celery executor: a Redis broker and two Celery workers.

The test starts its own `redis-server` (a temp folder, a free loopback port, no persistence,
stopped at the end) and two workers exactly as docs/deploy.md ("Celery and Redis") shows, runs
`full_pipeline` with `dagster job execute` under CLINFUSE_EXECUTOR=celery on the session's tiny
landing zone, and compares the result with the in-process run of the same zone and settings
(conftest's `pipeline_run`). While the run goes, the test itself holds the one slot of the `gpu`
pool, as another run's training step would: the training step must wait for it. Needs Debian's
`redis-server` (installed by .ci/run) and the `celery` extra (in `dev`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from clinfuse.orchestration.deliveries import apply_partitions, record_deliveries
from clinfuse.orchestration.executors import GPU_STEPS
from clinfuse.orchestration.runner import read_config
from tests.conftest import TINY_TRAINING

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
EXTRA = "the `celery` extra: pip install -e '.[celery]'"
WORKERS = ("clinfuse-1", "clinfuse-2")
HOLDER = ("another-run", "its-training-step")  # who holds the gpu slot while the run starts
RUN_TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for(ready, what: str, timeout: float, alive=None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if alive is not None and not alive():
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            pytest.fail(f"{what} exited before it was ready:\n{tail}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def _stop(*processes: subprocess.Popen, group: bool = False) -> None:
    """SIGTERM to each (a Celery worker's warm shutdown), then SIGKILL to any still there after
    20 s; `group`: to its whole process group (each worker is started in a session of its own)."""

    def send(process: subprocess.Popen, sig: int) -> None:
        if process.poll() is None and group:
            os.killpg(process.pid, sig)
        elif process.poll() is None:
            process.send_signal(sig)

    for process in processes:
        send(process, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for process in processes:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            send(process, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def redis_urls() -> Iterator[tuple[str, str]]:
    """A redis-server of our own: (broker URL, result-backend URL), two databases of it."""
    pytest.importorskip("dagster_celery", reason=f"dagster-celery missing; needs {EXTRA}")
    redis = pytest.importorskip("redis", reason=f"the redis client missing; needs {EXTRA}")
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server on PATH: apt-get install redis-server")
    base, port = Path(tempfile.mkdtemp(prefix="clinfuse-redis-")), _free_port()
    args = [server, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(base)]
    args += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
    log = base / "redis.log"
    with open(log, "w") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=base)
    client = redis.Redis(host="127.0.0.1", port=port)

    def answers() -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    try:
        _wait_for(answers, "redis-server", 30, alive=lambda: process.poll() is None, log=log)
        yield f"redis://127.0.0.1:{port}/0", f"redis://127.0.0.1:{port}/1"
    finally:
        client.close()
        _stop(process)
        shutil.rmtree(base, ignore_errors=True)


@contextmanager
def celery_workers(env: dict[str, str], cwd: Path) -> Iterator[dict[str, int]]:
    """The two workers of docs/deploy.md, each running one step at a time in its own process
    (solo pool: a prefork pool's children may not start the decode stages' process pools);
    {hostname: pid}. Stopped at the end, however the block ends."""
    processes: dict[str, subprocess.Popen] = {}
    try:
        for name in WORKERS:
            command = [str(BIN / "celery"), "-A", "dagster_celery.app", "worker", "-P", "solo"]
            command += ["-n", f"{name}@%h", "-I", "clinfuse.orchestration.definitions"]
            command += ["--prefetch-multiplier=1", "-l", "INFO"]
            with open(cwd / f"{name}.log", "w") as out:
                processes[name] = subprocess.Popen(
                    command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, stopped as one
                )  # fmt: skip
        for name, process in processes.items():
            log = cwd / f"{name}.log"
            _wait_for(
                lambda log=log: " ready." in log.read_text(),
                f"celery worker {name}",
                120,
                alive=lambda process=process: process.poll() is None,
                log=log,
            )
        hostname = socket.gethostname()
        yield {f"{name}@{hostname}": process.pid for name, process in processes.items()}
    finally:
        _stop(*processes.values(), group=True)


def _events(instance, run_id: str) -> list:
    return [entry for entry in instance.all_logs(run_id) if entry.is_dagster_event]


def _waiting_for_gpu(storage, run_id: str) -> list[str]:
    """The run's steps that asked for the gpu pool's slot and wait for it (the instance's own
    record of pending claims; the Celery executor logs no "blocked" event, the others do)."""
    return [
        s.step_key for s in storage.get_concurrency_info("gpu").pending_steps if s.run_id == run_id
    ]


def _release_when_claimed(home: Path, run_id: str, launcher, found: dict[str, Any]) -> None:
    """Frees the held gpu slot as soon as the run asks for it (noting what the instance held
    then, and when), or when the launcher exits: the run is never left blocked."""
    import dagster as dg

    with dg.DagsterInstance.local_temp(str(home)) as instance:
        storage = instance.event_log_storage
        deadline = time.monotonic() + RUN_TIMEOUT
        while launcher.poll() is None and time.monotonic() < deadline:
            if _waiting_for_gpu(storage, run_id):
                found["while_blocked"] = storage.get_concurrency_info("gpu")
                found["released"] = time.time()
                break
            time.sleep(0.2)
        storage.free_concurrency_slot_for_step(*HOLDER)


@pytest.fixture(scope="module")
def celery_run(redis_urls, landing, tmp_path_factory, request) -> Iterator[dict[str, Any]]:
    """`dagster job execute -j full_pipeline` on the Celery executor, with the gpu slot held
    by someone else until the run's training step asks for it; and, while it goes, the
    in-process run to compare it with (conftest's, unless an earlier test made it already)."""
    import dagster as dg

    home, workdir = tmp_path_factory.mktemp("celery-home"), tmp_path_factory.mktemp("celery-work")
    cwd = tmp_path_factory.mktemp("celery-cwd")
    # docs/dagster.yaml.example (`concurrency.pools.default_limit: 1`) with SQLite storage
    example = yaml.safe_load((ROOT / "docs" / "dagster.yaml.example").read_text())
    example["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    (home / "dagster.yaml").write_text(yaml.safe_dump(example))
    config = cwd / "run.yaml"
    config.write_text(yaml.safe_dump({"training": TINY_TRAINING}))  # as pipeline_run's
    broker, backend = redis_urls
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "CLINFUSE_LANDING": str(landing),
        "CLINFUSE_WORKDIR": str(workdir),
        "CLINFUSE_CONFIG": str(config),
        "CLINFUSE_EXECUTOR": "celery",
        "CELERY_BROKER_URL": broker,
        "CELERY_RESULT_BACKEND": backend,
    }
    with celery_workers(env, cwd) as workers, dg.DagsterInstance.local_temp(str(home)) as instance:
        storage = instance.event_log_storage
        storage.initialize_concurrency_limit_to_default("gpu")
        assert storage.claim_concurrency_slot("gpu", *HOLDER).is_claimed
        # As the landing-zone sensor would: the zone's files recorded as a delivery (a
        # partition), and the run for that partition launched.
        plan = record_deliveries(landing, workdir, read_config(config), instance)
        apply_partitions(plan, instance)
        command = [str(BIN / "dagster"), "job", "execute", "-j", "full_pipeline"]
        command += ["-m", "clinfuse.orchestration.definitions"]
        command += ["--tags", json.dumps({"dagster/partition": plan.added})]
        log = cwd / "launcher.log"
        with open(log, "w") as out:
            launcher = subprocess.Popen(
                command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT
            )
        released: dict[str, Any] = {}
        releaser: threading.Thread | None = None
        try:
            started = time.monotonic()
            alive = lambda: launcher.poll() is None  # noqa: E731
            _wait_for(lambda: instance.get_runs(), "the run", 60, alive=alive, log=log)
            (run,) = instance.get_runs()
            releaser = threading.Thread(
                target=_release_when_claimed, args=(home, run.run_id, launcher, released)
            )
            releaser.start()
            # Meanwhile, on its own instance (so not our slot), the in-process run.
            in_process = request.getfixturevalue("pipeline_run")
            launcher.wait(timeout=max(10.0, RUN_TIMEOUT - (time.monotonic() - started)))
        finally:
            _stop(launcher)  # a no-op once it has exited; then the releaser ends too
            if releaser is not None:
                releaser.join()
        run = instance.get_run_by_id(run.run_id)
        report = workdir / "report.json"
        yield {
            "run": run,
            "events": _events(instance, run.run_id),
            **released,
            "gpu": storage.get_concurrency_info("gpu"),
            "workers": workers,
            "launcher": launcher,
            "output": log.read_text(),
            "report": json.loads(report.read_text()) if report.exists() else None,
            "in_process": in_process["report"],
        }


def _step_spans(events) -> dict[str, tuple[float, float]]:
    starts, ends = {}, {}
    for entry in events:
        kind = entry.dagster_event_type.value
        if kind == "STEP_START":
            starts[entry.step_key] = entry.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            ends[entry.step_key] = entry.timestamp
    return {step: (starts[step], ends.get(step, float("inf"))) for step in starts}


def test_the_pipeline_runs_in_the_celery_workers(celery_run):
    import dagster as dg

    run, events, workers = celery_run["run"], celery_run["events"], celery_run["workers"]
    assert celery_run["launcher"].returncode == 0, celery_run["output"][-3000:]
    assert run.status == dg.DagsterRunStatus.SUCCESS
    steps = [e for e in events if e.dagster_event_type.value == "STEP_START"]
    succeeded = {e.step_key for e in events if e.dagster_event_type.value == "STEP_SUCCESS"}
    assert len(steps) > 30
    assert succeeded == {e.step_key for e in steps}
    # Every step ran inside one of our two workers, not in the process that launched the run.
    pids = {e.dagster_event.pid for e in steps}
    assert pids <= set(workers.values()), (pids, workers)
    assert celery_run["launcher"].pid not in pids
    assert pids == set(workers.values())  # both took steps
    # ... and Celery says so: one task per step, each naming the worker that took it.
    tasks = {
        e.step_key: e.dagster_event.engine_event_data.metadata["Celery worker"].text
        for e in events
        if e.message.endswith(f"Executing steps {e.step_key} in celery worker")
    }
    assert set(tasks) == {e.step_key for e in steps}
    assert set(tasks.values()) == set(workers)
    submitted = [e for e in events if e.message.startswith("Submitting celery task for step")]
    assert {e.step_key for e in submitted} == set(tasks)


def test_celery_gives_the_in_process_result(celery_run):
    celery, in_process = celery_run["report"], celery_run["in_process"]
    assert celery["cohort"] == in_process["cohort"]
    assert celery["inputs"] == in_process["inputs"]
    assert len(celery["quarantine"]) == len(in_process["quarantine"])
    assert set(celery["metrics"]) == set(in_process["metrics"])
    for model, metrics in in_process["metrics"].items():
        for name, value in metrics.items():
            assert celery["metrics"][model][name] == pytest.approx(value, abs=1e-9), (model, name)


def test_training_waits_for_its_pool_slot_under_celery(celery_run):
    """The executor claims the `gpu` slot before it hands a training step to a worker: while
    another holder had it, modality_models waited for it (a pending claim) and did not start."""
    spans = _step_spans(celery_run["events"])
    assert "released" in celery_run, "the training step never asked for the gpu slot"
    held = celery_run["while_blocked"]  # the slot was the other holder's, our step waited
    assert [(s.run_id, s.step_key) for s in held.claimed_slots] == [HOLDER]
    waiting = [s for s in held.pending_steps if s.assigned_timestamp is None]
    assert [(s.run_id, s.step_key) for s in waiting] == [(celery_run["run"].run_id, GPU_STEPS[0])]
    assert celery_run["released"] < spans["modality_models"][0]  # it started once freed
    training = sorted(spans[step] for step in GPU_STEPS)
    assert training[0][1] <= training[1][0]  # one training step after the other
    info = celery_run["gpu"]
    assert (info.slot_count, info.active_slot_count, info.pending_step_count) == (1, 0, 0)


def test_the_gpu_steps_are_the_gpu_pool(tmp_path):
    """orchestration/executors.py names the training ops (the Kubernetes GPU config is keyed by
    them; the test above watches them): exactly the assets of the `gpu` pool."""
    from clinfuse.orchestration.definitions import build_definitions

    job = build_definitions(tmp_path, tmp_path).resolve_job_def("full_pipeline")
    assert {node.name for node in job.nodes if node.definition.pool == "gpu"} == set(GPU_STEPS)


def test_the_executor_comes_from_the_environment(monkeypatch):
    from clinfuse.orchestration.executors import EXECUTOR_VARIABLE, executor_from_environment

    monkeypatch.delenv(EXECUTOR_VARIABLE, raising=False)
    assert executor_from_environment() is None  # Dagster's multiprocess default
    monkeypatch.setenv(EXECUTOR_VARIABLE, "celery")
    pytest.importorskip("dagster_celery", reason=f"dagster-celery missing; needs {EXTRA}")
    assert executor_from_environment().name == "celery"
    monkeypatch.setenv(EXECUTOR_VARIABLE, "dask")
    with pytest.raises(ValueError, match="expected one of multiprocess, celery, k8s"):
        executor_from_environment()

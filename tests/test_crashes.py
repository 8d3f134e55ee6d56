"""What a crash (SIGKILL, a power cut) or a second run at the same time leaves: nothing trusted
that is not whole. Fast and local; tests/test_rerun.py kills whole pipeline runs.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import numpy as np
import pytest
from dagster import AssetKey, build_input_context, build_output_context
from mlflow import MlflowClient
from upath import UPath

from clinfuse.assets.evaluation.registry import (
    CHAMPION,
    VERIFIED,
    VERIFIED_TAG,
    drop_broken_versions,
    register_version,
    version_problem,
)
from clinfuse.assets.ingest.ingested import ShardSet
from clinfuse.models.shards import (
    ShardError,
    ShardReader,
    ShardWriter,
    manifest_path,
    verify_shards,
)
from clinfuse.orchestration.cli import main
from clinfuse.orchestration.io_manager import ParquetIOManager
from clinfuse.orchestration.runner import PipelineFailed, workdir_lock

REPO = Path(__file__).resolve().parents[1]
SHAPE = (1, 4, 4)
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def _items(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, *SHAPE)).astype(np.float16)


def _write(directory: Path, items: np.ndarray, per_shard: int = 4) -> list[tuple[str, int]]:
    with ShardWriter(directory, "images", SHAPE, items_per_shard=per_shard) as writer:
        return [writer.append(item) for item in items]


# --- shards ----------------------------------------------------------------------------------


def test_shards_read_back_and_their_manifest_lists_size_and_sha256(tmp_path):
    items = _items(10)
    refs = _write(tmp_path, items)
    manifest = json.loads(manifest_path(tmp_path, "images").read_text())
    assert sorted(manifest["shards"]) == [
        "images-00000.npy",
        "images-00001.npy",
        "images-00002.npy",
    ]
    assert [entry["items"] for entry in manifest["shards"].values()] == [4, 4, 2]
    for name, entry in manifest["shards"].items():
        assert entry["bytes"] == (tmp_path / name).stat().st_size
    verify_shards(tmp_path, manifest["shards"])
    reader = ShardReader(tmp_path)
    for item, (shard, slot) in zip(items, refs, strict=True):
        np.testing.assert_array_equal(reader.get(shard, slot), item)
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_writer_that_never_finished_vouches_for_nothing(tmp_path):
    _write(tmp_path, _items(4))  # an earlier, finished run
    writer = ShardWriter(tmp_path, "images", SHAPE, items_per_shard=4)  # a rerun, then killed
    for item in _items(6, seed=1):
        writer.append(item)
    assert not manifest_path(tmp_path, "images").exists()  # the old one went first
    with pytest.raises(ShardError, match="no finished writer"):
        ShardReader(tmp_path).get("images-00000.npy", 0)


def test_an_exception_leaves_no_manifest(tmp_path):
    with pytest.raises(RuntimeError), ShardWriter(tmp_path, "images", SHAPE) as writer:
        writer.append(_items(1)[0])
        raise RuntimeError("the ingest failed")
    assert not manifest_path(tmp_path, "images").exists()
    assert not list(tmp_path.glob("*.npy"))


def test_a_cut_or_changed_shard_is_refused(tmp_path):
    _write(tmp_path, _items(8))
    digests = json.loads(manifest_path(tmp_path, "images").read_text())["shards"]
    shard = tmp_path / "images-00001.npy"
    whole = shard.read_bytes()
    shard.write_bytes(whole[:-7])  # what a copy cut short leaves
    with pytest.raises(ShardError, match="bytes"):
        ShardReader(tmp_path).get("images-00001.npy", 0)
    flipped = bytearray(whole)
    flipped[-1] ^= 0xFF  # the same size, other bytes: only the sha256 tells
    shard.write_bytes(bytes(flipped))
    ShardReader(tmp_path).get("images-00001.npy", 0)  # the cheap check cannot see it ...
    with pytest.raises(ShardError, match="sha256"):
        verify_shards(tmp_path, digests)  # ... the loader's can


KILLED_WRITER = """
import os, signal, sys
import numpy as np
from clinfuse.models import shards

real = np.save
def save_half_then_die(file, array):
    real(file, array[: len(array) // 2])  # part of the shard is on disk ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... when the run is killed
shards.np.save = save_half_then_die

writer = shards.ShardWriter(sys.argv[1], "images", (1, 4, 4), items_per_shard=4)
for _ in range(4):
    writer.append(np.ones((1, 4, 4), dtype="float16"))
"""


def test_a_writer_killed_mid_shard_leaves_no_shard_under_its_name(tmp_path):
    done = subprocess.run([sys.executable, "-c", KILLED_WRITER, str(tmp_path)], check=False)
    assert done.returncode == -signal.SIGKILL
    assert not (tmp_path / "images-00000.npy").exists()  # only the temporary file
    assert [p.name for p in tmp_path.iterdir()] == [".images-00000.npy.tmp"]


# --- the IO manager's ShardSet ---------------------------------------------------------------


def _stored_shard_set(tmp_path: Path) -> tuple[ParquetIOManager, UPath, Path]:
    shard_dir = tmp_path / "shards" / "study_images"
    _write(shard_dir, _items(8))
    manager = ParquetIOManager(base_path=UPath(tmp_path / "tables"))
    path = UPath(tmp_path / "tables" / "study_images.parquet")
    path.parent.mkdir(parents=True)
    shards = ShardSet(shard_dir, ("images-00000.npy", "images-00001.npy"), SHAPE)
    manager.dump_to_path(build_output_context(asset_key="study_images"), shards, path)
    return manager, path, shard_dir


def _load(manager: ParquetIOManager, path: UPath) -> object:
    return manager.load_from_path(build_input_context(asset_key=AssetKey("study_images")), path)


def test_a_stored_shard_set_loads_only_while_its_shards_are_the_ones_written(tmp_path):
    """A later run killed while rewriting the shard folder must not pass for the stored one."""
    manager, path, shard_dir = _stored_shard_set(tmp_path)
    assert _load(manager, path).shards == ("images-00000.npy", "images-00001.npy")
    # The rerun's fresh folder, one shard of other images written, then the kill.
    shutil.rmtree(shard_dir)
    writer = ShardWriter(shard_dir, "images", SHAPE, items_per_shard=4)
    for item in _items(5, seed=2):
        writer.append(item)
    with pytest.raises(ShardError, match=r"^study_images: images-0000[01]\.npy .*clinfuse run"):
        _load(manager, path)


def test_a_shard_set_stored_without_checksums_is_refused(tmp_path):
    manager, path, _ = _stored_shard_set(tmp_path)
    stored = path.with_name("study_images.shards.json")
    raw = json.loads(stored.read_text())
    del raw["digests"]
    stored.write_text(json.dumps(raw))
    with pytest.raises(ShardError, match="without checksums"):
        _load(manager, path)


# --- one run at a time -----------------------------------------------------------------------

HOLDER = """
import sys, time
from pathlib import Path
from clinfuse.orchestration.runner import workdir_lock
with workdir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def test_a_second_run_on_the_work_dir_exits_with_one_line(tmp_path, capsys):
    workdir = tmp_path / "work"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        landing = tmp_path / "landing"
        (landing / "ehr").mkdir(parents=True)
        code = main(["run", "--landing", str(landing), "--workdir", str(workdir)])
        lock = workdir.resolve() / ".lock"
        assert code == 1
        assert capsys.readouterr().err == (
            f"clinfuse run failed: another run holds {lock} (pid {holder.pid})\n"
        )
        assert sorted(p.name for p in workdir.iterdir()) == [".lock"]  # nothing else touched
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with workdir_lock(workdir):  # the kernel let go of the killed holder's lock
        assert (workdir / ".lock").read_text() == f"{os.getpid()}\n"


def test_the_lock_is_held_for_the_block_only(tmp_path):
    # flock locks belong to an open file: a second open, even in this process, is refused
    refused = pytest.raises(PipelineFailed, match="another run holds")
    with workdir_lock(tmp_path), refused, workdir_lock(tmp_path):
        pass
    with workdir_lock(tmp_path):
        pass


# --- the registry: no version without its artifacts ------------------------------------------


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[float], params=None) -> list[float]:
        return [2 * x for x in model_input]


@pytest.fixture
def registry(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("crashes", artifact_location=str(tmp_path / "art"))
    yield client, experiment
    mlflow.set_tracking_uri(None)


def _logged(experiment: str) -> tuple[str, str]:
    state = Path(os.environ["MLFLOW_TRACKING_URI"].removeprefix("sqlite:///")).with_name("x.json")
    state.write_text("{}")
    with mlflow.start_run(experiment_id=experiment) as run:
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=Doubler(),
            artifacts={"state": str(state)},
            pip_requirements=[],
        )
    return run.info.run_id, info.model_uri


def _artifact_dir(client: MlflowClient, name: str, version: str) -> Path:
    uri = client.get_model_version_download_uri(name, version)
    return Path(uri.removeprefix("file://"))


def test_a_version_whose_artifacts_went_missing_is_dropped_at_the_next(registry):
    client, experiment = registry
    first = register_version(client, "m", *_logged(experiment), {})
    assert first.tags[VERIFIED_TAG] == VERIFIED
    # What a registry copy that never finished leaves: a version, its files only in part.
    client.delete_model_version_tag("m", first.version, VERIFIED_TAG)
    (_artifact_dir(client, "m", first.version) / "artifacts" / "x.json").unlink()
    assert "artifact state" in version_problem(client, client.get_model_version("m", "1"))

    second = register_version(client, "m", *_logged(experiment), {})
    assert [v.version for v in client.search_model_versions("name = 'm'")] == [second.version]
    assert mlflow.pyfunc.load_model(f"models:/m/{second.version}").predict([1.0]) == [2.0]


def test_a_broken_champion_is_kept_and_tagged_for_a_person(registry):
    client, experiment = registry
    first = register_version(client, "m", *_logged(experiment), {})
    client.set_registered_model_alias("m", CHAMPION, first.version)
    client.delete_model_version_tag("m", first.version, VERIFIED_TAG)
    shutil.rmtree(_artifact_dir(client, "m", first.version))
    assert drop_broken_versions(client, "m") == []
    tag = client.get_model_version("m", first.version).tags[VERIFIED_TAG]
    assert tag.startswith("no artifacts under")


def test_a_model_whose_upload_never_finished_is_not_registered(registry):
    client, experiment = registry
    run = client.create_run(experiment)
    pending = client.create_logged_model(experiment, name="model", source_run_id=run.info.run_id)
    with pytest.raises(RuntimeError, match="PENDING"):
        register_version(client, "m", run.info.run_id, f"models:/{pending.model_id}", {})
    assert client.search_model_versions("name = 'm'") == []


# --- no secret in the repository -------------------------------------------------------------

# A name that ends in one of these words: MLFLOW_TRACKING_PASSWORD, api_key; not chunk_tokens.
SECRET_KEY = r"[\w.-]*(?:password|passwd|secret|token|(?:api|access|secret)[_-]?key)\b"
ASSIGNED = re.compile(rf"(?i)\b{SECRET_KEY}[\"']?\s*[:=]\s*(?P<value>[^\s,;#)]+)")
URI_PASSWORD = re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s/:@]+:(?P<value>[^\s/@]+)@")
# How a value may say "from elsewhere": an env reference, a mask, a placeholder.
ELSEWHERE = re.compile(r"^[\"']?(\{\s*env:|\$|<|\*\*\*|os\.environ|(dg\.)?EnvVar\()")


def _code_lines(path: Path, text: str) -> list[tuple[int, str]]:
    """(number, line) of what could configure something: a Markdown file's fenced blocks only,
    since prose ("an admin password: it is ...") is no assignment; every line elsewhere."""
    lines = list(enumerate(text.splitlines(), start=1))
    if path.suffix != ".md":
        return lines
    kept, fenced = [], False
    for number, line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            kept.append((number, line))
    return kept


def _committed_secrets(path: Path, text: str) -> list[str]:
    found = []
    for number, line in _code_lines(path, text):
        values = [m["value"] for m in ASSIGNED.finditer(line)]
        if path.suffix == ".py":
            # Code: only a literal string is a value, not a name; and a URI in code is an
            # example (a docstring, a test of masking), not configuration.
            values = [v for v in values if v[:1] in "\"'" and len(v.strip("\"'")) > 0]
        else:
            values += [m["value"] for m in URI_PASSWORD.finditer(line)]
        found += [f"{path}:{number}: {v}" for v in values if not ELSEWHERE.match(v)]
    return found


def test_no_secret_is_committed():
    """Every password, token or key that a tracked file configures is a reference to the
    environment: YAML, INI, shell, Markdown code blocks (URIs with a password included), and
    literal strings assigned to such a name in Python."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    found = []
    for name in filter(None, listed):
        path = REPO / name.decode()
        if path.is_file() and not path.is_symlink() and path.stat().st_size < 1_000_000:
            try:
                found += _committed_secrets(path.relative_to(REPO), path.read_text())
            except UnicodeDecodeError:
                continue  # binary
    assert found == []


def test_the_secret_check_catches_what_it_should():
    bad = 'password: hunter2\nMLFLOW_TRACKING_PASSWORD=s3cret\nuri = "https://bob:pw1@mlflow"'
    assert len(_committed_secrets(Path("x.yaml"), bad)) == 3
    assert len(_committed_secrets(Path("x.md"), f"```\n{bad}\n```\n")) == 3
    assert _committed_secrets(Path("x.md"), "the admin password: it is set once") == []
    assert _committed_secrets(Path("x.md"), "NoteEmbedder(chunk_tokens=200)") == []
    good = textwrap.dedent(
        """
        password: {env: DAGSTER_PG_PASSWORD}
        export MLFLOW_TRACKING_PASSWORD="$(cat /run/secrets/mlflow)"
        postgresql://mlflow:***@db/mlflow
        """
    )
    assert _committed_secrets(Path("x.yaml"), good) == []
    assert _committed_secrets(Path("x.py"), "token = _VAR.set(True)\n") == []
    quote = chr(34)  # spelled out, or this very line would be a committed literal secret
    assert len(_committed_secrets(Path("x.py"), f"api_key = {quote}abc123{quote}\n")) == 1
    assert _committed_secrets(Path("x.py"), '"""e.g. postgresql://user:secret@host/db"""') == []

"""Training in several processes (torchrun, DistributedDataParallel) matches one process.

One saved job, the same global batch (16) and seed: trained by the real entry point under
torchrun in 2 CPU processes (gloo, `python -m torch.distributed.run -m
clinfuse.models.train_job`), and by train_fusion in this process, in a process group of one
(a torchrun of one would cost ~6 s more of interpreter starts on 2 cores).

- Both runs take the distributed path. DistributedSampler's permutation depends only on the
  seed and the epoch, so the one process's batch k is exactly the union of the 2 ranks' batch
  k. The plain single-process path (no group) keeps its own shuffle, unchanged so that every
  run without torchrun keeps its results: comparing with it would compare two orders.
- Augmentation, nn.Dropout and modality dropout are off: each rank draws its own for its own
  rows, which no single process reproduces. The comparison trains EHR and notes only: the CNN
  encoders hold BatchNorm, which in training normalises over each rank's 8 rows, not the
  global 16 (the second test checks that the ranks still end bit-identical). Train rows (64)
  are a multiple of 16, so nothing is padded. EMA and the unimodal loss stay on.
- Tolerance 1e-5 on weights and probabilities. The ranks' gradients are averaged by an
  all-reduce, summed in another order than one process sums 16 rows: float32 rounding (~1e-7
  relative), which AdamW carries along over 16 steps. Measured: 1.2e-7 (weights) and 1.3e-7
  (probabilities); a wrong split (batches of 8 instead of 16) moves them 4e-2 and 0.12.
  Left out of the weight comparison: the attention layers' key biases. Softmax ignores what
  they add (the same q.b_k to every key), so their gradient is 0 up to rounding noise, which
  AdamW scales into steps of +-lr: they differ by up to lr (measured 3e-3) and change no
  output (the probability comparison includes them).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from clinfuse.models.data import AdmissionDataset, ModalityInputs
from clinfuse.models.distributed import local_batch, process_group
from clinfuse.models.modalities import MODALITIES
from clinfuse.models.shards import ShardWriter
from clinfuse.models.train_job import load_job, load_result, save_job
from clinfuse.models.training import TrainConfig, TrainResult, predict_proba, train_fusion

ROOT = Path(__file__).resolve().parents[1]
EHR, TEXT = 6, 5
IMAGE, AUDIO = (1, 16, 16), (1, 8, 20)
TOLERANCE = 1e-5  # weights and probabilities (see the module's docstring)

pytestmark = pytest.mark.usefixtures("one_thread")


def _shards(folder: Path, items: np.ndarray) -> list:
    with ShardWriter(folder, folder.name, items.shape[1:], items_per_shard=32) as writer:
        return [writer.append(item.astype(np.float16)) for item in items]


def _inputs(tmp_path: Path, n: int = 96) -> ModalityInputs:
    """Every modality carries the label. Notes are rare (30% of admissions), so some ranks'
    batches of 8 hold none and the text encoder gets no gradient on that rank in that step."""
    rng = np.random.default_rng(0)
    labels = (np.arange(n) % 2).astype(np.float32)
    sign = (2 * labels - 1)[:, None]
    ehr = (rng.normal(size=(n, EHR)) + sign).astype(np.float32)
    text = (rng.normal(size=(n, TEXT)) + sign).astype(np.float32)
    image = np.clip(rng.normal(0.5, 0.1, (n, *IMAGE)) + 0.1 * sign[..., None, None], 0, 1)
    audio = rng.normal(-40, 10, (n, *AUDIO)) + 8 * sign[..., None, None]
    return ModalityInputs(
        ehr=ehr,
        text=text,
        image_refs=_shards(tmp_path / "img", image),
        image_dir=tmp_path / "img",
        audio_refs=_shards(tmp_path / "aud", audio),
        audio_dir=tmp_path / "aud",
        image_shape=IMAGE,
        audio_shape=AUDIO,
        mask=rng.random((n, 4)) < np.array([0.9, 0.3, 0.75, 0.75]),
        labels=labels,
    )


def _job(tmp_path: Path, **config) -> tuple[Path, AdmissionDataset, TrainConfig]:
    inputs = _inputs(tmp_path)
    rows = np.arange(len(inputs))
    train, validation = AdmissionDataset(inputs, rows[:64]), AdmissionDataset(inputs, rows[64:])
    settings = {
        "strategy": "attention",
        "width": 16,
        "epochs": 4,
        "batch_size": 16,
        "learning_rate": 3e-3,
        "patience": 10,
        "augment": False,
        "dropout": 0.0,
        "device": "cpu",
    }
    settings = TrainConfig(**{**settings, **config})
    return save_job(tmp_path / "job", train, validation, settings), validation, settings


def _torchrun(processes: int, job: Path, out: Path) -> str:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc_per_node={processes}", "-m", "clinfuse.models.train_job"]
    command += [str(job), "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _in_a_group_of_one(job: Path, monkeypatch) -> TrainResult:
    """The job trained here, in a process group of one (what torchrun would set up)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    launch = {"RANK": 0, "LOCAL_RANK": 0, "WORLD_SIZE": 1, "MASTER_ADDR": "127.0.0.1"}
    for name, value in {**launch, "MASTER_PORT": port}.items():
        monkeypatch.setenv(name, str(value))
    train, validation, config = load_job(job)
    with process_group(config.device):
        return train_fusion(train, validation, config)


def test_two_processes_train_what_one_process_trains(tmp_path, monkeypatch):
    job, validation, config = _job(tmp_path, modalities=("ehr", "text"))
    assert "2 process(es)" in _torchrun(2, job, tmp_path / "two.pt")
    two, saved = load_result(tmp_path / "two.pt")
    one = _in_a_group_of_one(job, monkeypatch)
    assert saved["processes"] == 2
    assert len(one.history) == len(saved["history"]) == config.epochs
    assert one.best_epoch == saved["best_epoch"]

    weights = max(_weight_differences(one.model, two).values())
    p_one, p_two = predict_proba(one.model, validation), predict_proba(two, validation)
    probabilities = float(np.abs(p_one - p_two).max())
    print(f"max |weight difference| {weights:.2e}, max |probability difference| "
          f"{probabilities:.2e}")  # fmt: skip
    assert weights < TOLERANCE
    assert probabilities < TOLERANCE
    for mine, theirs in zip(one.history, saved["history"], strict=True):
        assert mine["train_loss"] == pytest.approx(theirs["train_loss"], abs=TOLERANCE)
        assert mine["val_loss"] == pytest.approx(theirs["val_loss"], abs=TOLERANCE)
    # Not two untrained models, and a rank did train a step without any note.
    assert one.history[-1]["train_loss"] < one.history[0]["train_loss"]
    assert _a_rank_batch_without(job, "text", config)


def _weight_differences(one: torch.nn.Module, two: torch.nn.Module) -> dict[str, float]:
    """max |difference| per tensor, without the attention key biases (the module's docstring)."""
    theirs, found = two.state_dict(), {}
    for name, mine in one.state_dict().items():
        difference = (mine - theirs[name]).abs()
        if name.endswith("self_attn.in_proj_bias"):  # [query; key; value] biases
            width = len(difference) // 3
            difference = torch.cat([difference[:width], difference[2 * width :]])
        found[name] = float(difference.max())
    return found


def _a_rank_batch_without(job: Path, modality: str, config: TrainConfig) -> bool:
    """Whether some rank's batch (of 2 ranks) lacked `modality`: DistributedSampler's order."""
    train, _, _ = load_job(job)
    present = train.mask[:, MODALITIES.index(modality)]
    for epoch in range(1, config.epochs + 1):
        for rank in (0, 1):
            sampler = DistributedSampler(train, num_replicas=2, rank=rank, seed=config.seed)
            sampler.set_epoch(epoch)
            rows = np.array(list(sampler))
            per_rank = config.batch_size // 2
            for start in range(0, len(rows), per_rank):
                if not present[rows[start : start + per_rank]].any():
                    return True
    return False


def test_two_processes_with_every_encoder_end_identical(tmp_path):
    """The CNN encoders hold BatchNorm: in train mode each rank normalises over its own rows
    (so no exact match with one process), and their running statistics are averaged after
    every step. The entry point fails unless both ranks end with bit-identical weights."""
    job, _, config = _job(tmp_path, epochs=2)
    log = _torchrun(2, job, tmp_path / "two.pt")
    assert "2 process(es)" in log
    model, state = load_result(tmp_path / "two.pt")
    assert state["processes"] == 2 and len(state["history"]) == config.epochs
    assert set(model.encoders) == set(MODALITIES)
    running = [b for n, b in model.named_buffers() if n.endswith("running_mean")]
    assert running and all(torch.isfinite(b).all() for b in running)


def test_the_global_batch_is_split_evenly():
    assert local_batch(64, world=4) == 16
    with pytest.raises(ValueError, match="multiple of the 3 training processes"):
        local_batch(64, world=3)

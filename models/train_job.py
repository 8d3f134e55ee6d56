"""Trains a fusion model from a saved job, in one process or several (torchrun).

A job is a folder that `save_job` writes: the train and validation rows (arrays.npz, read with
allow_pickle=False), their shard references and a TrainConfig (job.json). Images and
spectrograms stay in their shard folders, which every process must be able to read.

    python -m clinfuse.models.train_job JOB                               # one process
    torchrun --nproc_per_node 4 -m clinfuse.models.train_job JOB          # 4 GPUs (nccl)
    torchrun --nproc_per_node 2 -m clinfuse.models.train_job JOB --device cpu    # gloo

Every process trains (models/distributed.py); rank 0 alone prints the epochs and writes the
result, `JOB/trained.pt` unless `--out` names another file: the best epoch's weights, the
model's constructor arguments and the history (`load_result` rebuilds the model).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import torch

from clinfuse.models import distributed
from clinfuse.models.data import AdmissionDataset, ModalityInputs
from clinfuse.models.fusion import FusionModel
from clinfuse.models.training import TrainConfig, TrainResult, train_fusion

FORMAT = 1
SPLITS = ("train", "validation")
ARRAYS = ("ehr", "text", "mask", "labels")


def save_job(
    folder: str | Path, train: AdmissionDataset, validation: AdmissionDataset, config: TrainConfig
) -> Path:
    """Writes the rows of `train` and `validation` and `config` (as a plain TrainConfig) to
    `folder`. A dataset's own transforms are not saved: training adds its augmentation from
    `config.augment`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    splits: dict[str, dict] = {}
    for name, dataset in zip(SPLITS, (train, validation), strict=True):
        inputs, rows = dataset.inputs, dataset.indices
        for key in ARRAYS:
            values = getattr(inputs, key)
            if values is not None:
                arrays[f"{name}.{key}"] = np.asarray(values)[rows]
        splits[name] = {
            "image_refs": [_ref(inputs.image_refs[r]) for r in rows],
            "audio_refs": [_ref(inputs.audio_refs[r]) for r in rows],
            "image_dir": None if inputs.image_dir is None else str(inputs.image_dir),
            "audio_dir": None if inputs.audio_dir is None else str(inputs.audio_dir),
            "image_shape": list(inputs.image_shape),
            "audio_shape": list(inputs.audio_shape),
        }
    values = {f.name: getattr(config, f.name) for f in fields(TrainConfig)}
    values["modalities"] = list(values["modalities"])
    values["init_encoders"] = dict(values["init_encoders"])
    np.savez(folder / "arrays.npz", **arrays)
    document = {"format": FORMAT, "config": values, "splits": splits}
    (folder / "job.json").write_text(json.dumps(document, indent=1))
    return folder


def _ref(ref) -> list | None:
    return None if ref is None else [str(ref[0]), int(ref[1])]


def load_job(folder: str | Path) -> tuple[AdmissionDataset, AdmissionDataset, TrainConfig]:
    """(train, validation, config) as `save_job` wrote them."""
    folder = Path(folder)
    document = json.loads((folder / "job.json").read_text())
    if document.get("format") != FORMAT:
        raise ValueError(f"{folder}/job.json has format {document.get('format')}, not {FORMAT}")
    values = dict(document["config"])
    values["modalities"] = tuple(values["modalities"])
    config = TrainConfig(**values)
    datasets = []
    with np.load(folder / "arrays.npz", allow_pickle=False) as arrays:
        for name in SPLITS:
            split = document["splits"][name]
            inputs = ModalityInputs(
                ehr=arrays[f"{name}.ehr"],
                text=arrays[f"{name}.text"],
                image_refs=[None if r is None else (r[0], int(r[1])) for r in split["image_refs"]],
                image_dir=None if split["image_dir"] is None else Path(split["image_dir"]),
                audio_refs=[None if r is None else (r[0], int(r[1])) for r in split["audio_refs"]],
                audio_dir=None if split["audio_dir"] is None else Path(split["audio_dir"]),
                image_shape=tuple(split["image_shape"]),
                audio_shape=tuple(split["audio_shape"]),
                mask=arrays[f"{name}.mask"],
                labels=arrays.get(f"{name}.labels"),
            )
            datasets.append(AdmissionDataset(inputs))
    return datasets[0], datasets[1], config


def save_result(path: str | Path, result: TrainResult) -> Path:
    """The trained model and its history, written under a temporary name and renamed."""
    path = Path(path)
    state = {
        "format": FORMAT,
        "model_config": dict(result.model.config),
        "state_dict": result.model.state_dict(),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_val_auroc": result.best_val_auroc,
        "pretraining": result.pretraining,
        "pretrained_val_auroc": result.pretrained_val_auroc,
        "device": result.device,
        "processes": distributed.world_size(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    torch.save(state, partial)
    partial.replace(path)
    return path


def load_result(path: str | Path) -> tuple[FusionModel, dict]:
    """(the model in eval mode on CPU, everything else `save_result` stored)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = FusionModel(**state.pop("model_config"))
    model.load_state_dict(state.pop("state_dict"))
    return model.eval(), state


def _print_epoch(row: dict) -> None:
    if not distributed.is_main():
        return
    auroc = "n/a" if row["val_auroc"] is None else f"{row['val_auroc']:.4f}"
    print(
        f"epoch {row['epoch']:3d}  train loss {row['train_loss']:.4f}  "
        f"val loss {row['val_loss']:.4f}  val AUROC {auroc}  {row['seconds']:.1f} s",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", type=Path, help="a folder written by save_job")
    parser.add_argument("--out", type=Path, help="where rank 0 writes the result")
    parser.add_argument("--device", help="overrides the job's training.device (auto, cpu, cuda)")
    args = parser.parse_args(argv)
    train, validation, config = load_job(args.job)
    with distributed.process_group(args.device or config.device) as device:
        config = replace(config, device=str(device))
        if distributed.is_main():
            print(
                f"{distributed.world_size()} process(es) on {device.type}, global batch "
                f"{config.batch_size}, {len(train)} train / {len(validation)} validation rows",
                flush=True,
            )
        result = train_fusion(train, validation, config, on_epoch=_print_epoch)
        if not distributed.same_on_every_rank(result.model):
            raise RuntimeError("the ranks finished with different weights")
        if distributed.is_main():
            out = save_result(args.out or args.job / "trained.pt", result)
            print(f"best epoch {result.best_epoch}: {out}", flush=True)


if __name__ == "__main__":
    main()

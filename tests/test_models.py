"""clinfuse.models on tiny shapes: dataset, encoders, every fusion strategy, the training loop."""

from __future__ import annotations

import dataclasses
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader

from clinfuse.models.data import AdmissionDataset, ModalityInputs
from clinfuse.models.fusion import STRATEGIES, FusionModel
from clinfuse.models.modalities import MODALITIES
from clinfuse.models.shards import ShardWriter
from clinfuse.models.training import (
    TrainConfig,
    drop_modalities,
    ema_decay,
    predict_proba,
    single_modality,
    train_fusion,
)

EHR, TEXT = 6, 5
IMAGE, AUDIO = (1, 16, 16), (1, 8, 20)


pytestmark = pytest.mark.usefixtures("one_thread")


def _model(strategy: str, modalities=MODALITIES, dropout: float = 0.1, **shapes) -> FusionModel:
    torch.manual_seed(0)
    kwargs = {"image_shape": IMAGE, "audio_shape": AUDIO, **shapes}
    return FusionModel(
        EHR, TEXT, width=16, strategy=strategy, modalities=modalities, dropout=dropout, **kwargs
    )


def _batch(mask: torch.Tensor, image=IMAGE, audio=AUDIO, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b = len(mask)
    return {
        "ehr": torch.randn(b, EHR, generator=g),
        "text": torch.randn(b, TEXT, generator=g),
        "image": torch.rand(b, *image, generator=g),
        "audio": torch.randn(b, *audio, generator=g) * 20 - 40,
        "mask": mask,
        "label": (torch.arange(b) % 2).float(),
    }


def _mixed_mask() -> torch.Tensor:
    """Every modality missing somewhere, one admission with nothing, one with everything."""
    return torch.tensor(
        [
            [1, 1, 1, 1],
            [0, 0, 0, 0],
            [1, 0, 1, 0],
            [0, 1, 0, 1],
            [1, 1, 0, 0],
            [0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )


def _fill_missing(batch: dict, value: float | None = None) -> dict:
    """A copy whose missing modalities hold noise (or `value`, e.g. NaN) instead of zeros."""
    noisy = dict(batch)
    for column, modality in enumerate(MODALITIES):
        missing = ~batch["mask"][:, column]
        tensor = batch[modality].clone()
        fill = torch.randn_like(tensor) * 1e3 if value is None else torch.full_like(tensor, value)
        tensor[missing] = fill[missing]
        noisy[modality] = tensor
    return noisy


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_output_shape_for_each_strategy(strategy):
    model = _model(strategy).eval()
    logits = model(_batch(_mixed_mask()))
    assert logits.shape == (6,)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pipeline_sized_inputs(strategy):
    """64 px images and 64 x 251 log-mels (the pipeline's defaults) go through every encoder."""
    shapes = {"image_shape": (1, 64, 64), "audio_shape": (1, 64, 251)}
    model = _model(strategy, **shapes).eval()
    mask = torch.ones(2, 4, dtype=torch.bool)
    with torch.no_grad():
        logits = model(_batch(mask, image=(1, 64, 64), audio=(1, 64, 251)))
    assert logits.shape == (2,)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("train_mode", [False, True])
def test_missing_modality_content_cannot_change_output(strategy, train_mode):
    model = _model(strategy, dropout=0.0).train(train_mode)
    batch = _batch(_mixed_mask())
    with torch.no_grad():
        clean = model(batch)
        noisy = model(_fill_missing(batch))
        poisoned = model(_fill_missing(batch, float("nan")))
    assert torch.equal(clean, noisy)
    assert torch.equal(clean, poisoned)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradients_reach_every_encoder(strategy):
    model = _model(strategy)
    batch = _batch(torch.ones(4, 4, dtype=torch.bool))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(model(batch), batch["label"])
    loss.backward()
    for modality, encoder in model.encoders.items():
        grads = [p.grad for p in encoder.parameters() if p.grad is not None]
        assert grads, modality
        assert all(torch.isfinite(g).all() for g in grads), modality
        assert sum(float(g.abs().sum()) for g in grads) > 0, modality


def _write_shards(folder: Path, prefix: str, items: np.ndarray, per_shard: int = 32) -> list:
    with ShardWriter(folder, prefix, items.shape[1:], items_per_shard=per_shard) as writer:
        return [writer.append(item.astype(np.float16)) for item in items]


def _separable_inputs(tmp_path: Path, n: int = 96, seed: int = 0) -> ModalityInputs:
    """Labels readable from every modality: EHR/text column 0, image brightness, audio level."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(n) % 2).astype(np.float32)
    sign = (2 * labels - 1)[:, None]
    ehr = rng.normal(size=(n, EHR)).astype(np.float32)
    ehr[:, :1] += 2 * sign
    text = rng.normal(size=(n, TEXT)).astype(np.float32)
    text[:, :1] += 2 * sign
    image = np.clip(rng.normal(0.5, 0.1, (n, *IMAGE)) + 0.2 * sign[..., None, None], 0, 1)
    audio = rng.normal(-40, 10, (n, *AUDIO)) + 15 * sign[..., None, None]
    mask = rng.random((n, 4)) < 0.75
    return ModalityInputs(
        ehr=ehr,
        text=text,
        image_refs=_write_shards(tmp_path / "img", "img", image),
        image_dir=tmp_path / "img",
        audio_refs=_write_shards(tmp_path / "aud", "aud", audio),
        audio_dir=tmp_path / "aud",
        image_shape=IMAGE,
        audio_shape=AUDIO,
        mask=mask,
        labels=labels,
    )


def _splits(inputs: ModalityInputs) -> tuple[AdmissionDataset, AdmissionDataset]:
    rows = np.arange(len(inputs))
    return AdmissionDataset(inputs, rows[:64]), AdmissionDataset(inputs, rows[64:])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_learns_a_separable_set(tmp_path, strategy):
    train, validation = _splits(_separable_inputs(tmp_path))
    config = TrainConfig(strategy=strategy, width=16, epochs=8, batch_size=16, learning_rate=3e-3)
    rows = []
    result = train_fusion(train, validation, config, on_epoch=rows.append)
    assert rows == result.history
    assert set(rows[0]) == {"epoch", "train_loss", "val_loss", "val_auroc", "seconds"}
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.best_val_auroc > 0.9
    assert result.history[result.best_epoch - 1]["val_auroc"] == result.best_val_auroc
    assert result.device == "cpu"
    assert not result.model.training


def test_same_seed_same_predictions(tmp_path):
    train, validation = _splits(_separable_inputs(tmp_path))

    def run(seed: int) -> np.ndarray:
        config = TrainConfig(width=16, epochs=2, batch_size=16, seed=seed, patience=10)
        return predict_proba(train_fusion(train, validation, config).model, validation)

    first, second, other = run(0), run(0), run(1)
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)
    assert first.shape == (len(validation),)
    assert ((first >= 0) & (first <= 1)).all()


def test_weight_average_is_what_is_validated_and_kept(tmp_path):
    train, validation = _splits(_separable_inputs(tmp_path))
    config = TrainConfig(width=16, epochs=3, batch_size=16, patience=10, ema_epochs=2.0)
    averaged = train_fusion(train, validation, config)
    scores = predict_proba(averaged.model, validation, amp=False)
    assert roc_auc_score(validation.labels, scores) == pytest.approx(averaged.best_val_auroc)
    raw = train_fusion(train, validation, dataclasses.replace(config, ema_epochs=0.0))
    assert not np.allclose(scores, predict_proba(raw.model, validation, amp=False))


def test_weight_average_spans_epochs_not_steps():
    assert ema_decay(1.5, 22) == pytest.approx(0.9697, abs=1e-4)  # 2,000 admissions, batch 64
    assert ema_decay(1.5, 3) == pytest.approx(0.7778, abs=1e-4)  # a tiny cohort still moves
    assert ema_decay(0.0, 22) == 0.0


def test_training_leaves_global_state_alone(tmp_path):
    train, validation = _splits(_separable_inputs(tmp_path))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_fusion(train, validation, TrainConfig(width=16, epochs=1, batch_size=32))
    assert torch.equal(torch.rand(3), expected)
    assert not torch.are_deterministic_algorithms_enabled()


def test_single_modality_model(tmp_path):
    inputs = _separable_inputs(tmp_path)
    train, validation = _splits(inputs)
    config = TrainConfig(width=16, epochs=3, batch_size=16, modalities=("image",))
    model = train_fusion(train, validation, config).model
    assert list(model.encoders) == ["image"]
    # Admissions without an image all get the same (prior) score, whatever else they have.
    scores = predict_proba(model, validation)
    without_image = ~validation.mask[:, MODALITIES.index("image")]
    assert without_image.any()
    assert np.ptp(scores[without_image]) == 0


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_config_rebuilds_the_model(tmp_path, strategy):
    model = _model(strategy, modalities=("ehr", "audio")).eval()
    path = tmp_path / "model.pt"
    torch.save({"config": model.config, "state_dict": model.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    rebuilt = FusionModel(**saved["config"])
    rebuilt.load_state_dict(saved["state_dict"])
    batch = _batch(_mixed_mask())
    assert torch.equal(model(batch), rebuilt.eval()(batch))


def test_single_class_validation(tmp_path):
    inputs = _separable_inputs(tmp_path)
    train = AdmissionDataset(inputs, np.arange(64))
    negatives = AdmissionDataset(inputs, np.arange(64, 96, 2))  # even rows: label 0
    result = train_fusion(train, negatives, TrainConfig(width=16, epochs=2, batch_size=32))
    assert all(row["val_auroc"] is None for row in result.history)
    assert math.isnan(result.best_val_auroc)


def test_modality_dropout_never_empties_a_row():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(2000, 4, generator=g) < 0.6
    columns = torch.tensor([0, 2, 3])
    dropped = drop_modalities(mask, columns, 0.5, g)
    assert not (dropped & ~mask).any()  # nothing appears
    assert torch.equal(dropped[:, 1], mask[:, 1])  # columns outside the model are untouched
    had = mask[:, columns].any(1)
    assert torch.equal(dropped[:, columns].any(1), had)
    assert (dropped != mask).any()


def test_dataset_reads_shards_and_zero_fills(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.random((3, *IMAGE)).astype(np.float16)
    audio = (rng.normal(-40, 10, (2, *AUDIO))).astype(np.float16)
    image_refs = _write_shards(tmp_path / "img", "img", images, per_shard=2)  # two shards
    audio_refs = _write_shards(tmp_path / "aud", "aud", audio)
    inputs = ModalityInputs(
        ehr=np.arange(4 * EHR, dtype=np.float32).reshape(4, EHR),
        text=np.ones((4, TEXT), np.float32),
        image_refs=[image_refs[0], None, image_refs[2], image_refs[1]],
        image_dir=tmp_path / "img",
        audio_refs=[None, audio_refs[0], audio_refs[1], None],
        audio_dir=tmp_path / "aud",
        image_shape=IMAGE,
        audio_shape=AUDIO,
        # row 1 claims an image without a reference; row 3 has an image but mask False
        mask=np.array([[1, 1, 1, 0], [1, 0, 1, 1], [0, 1, 1, 1], [1, 1, 0, 0]], bool),
        labels=np.array([0, 1, 0, 1], np.float32),
    )
    dataset = AdmissionDataset(inputs, np.array([2, 0, 1, 3]))
    first = dataset[0]  # row 2
    assert first["image"].dtype == torch.float32 and first["image"].shape == IMAGE
    assert np.array_equal(first["image"].numpy(), images[2].astype(np.float32))
    assert np.array_equal(first["audio"].numpy(), audio[1].astype(np.float32))
    assert first["mask"].tolist() == [False, True, True, True]
    assert not first["ehr"].any()  # ehr missing: zeros, whatever the table holds
    row1 = dataset[2]
    assert row1["mask"].tolist() == [True, False, False, True]
    assert not row1["image"].any() and not row1["text"].any()
    assert torch.equal(row1["ehr"], torch.arange(EHR, 2 * EHR, dtype=torch.float32))
    assert not dataset[3]["image"].any()
    assert dataset.labels.tolist() == [0, 0, 1, 1]
    assert dataset.mask.shape == (4, 4)

    # Pickled (as for spawned workers) and in a worker process, reads are the same.
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[0]["image"], first["image"])
    loader = DataLoader(dataset, batch_size=4, num_workers=1)
    batch = next(iter(loader))
    assert torch.equal(batch["image"][0], first["image"])
    assert batch["mask"].dtype == torch.bool and batch["mask"].shape == (4, 4)


def test_unlabelled_dataset_predicts(tmp_path):
    inputs = _separable_inputs(tmp_path, n=8)
    inputs.labels = None
    dataset = AdmissionDataset(inputs)
    assert math.isnan(float(dataset[0]["label"]))
    model = _model("late").train()
    scores = predict_proba(model, dataset, batch_size=3)
    assert scores.shape == (8,) and model.training  # mode restored


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        _model("middle")
    with pytest.raises(ValueError, match="unknown modalities"):
        _model("early", modalities=("ehr", "video"))
    with pytest.raises(ValueError, match="rows"):
        ModalityInputs(
            np.zeros((2, 1)),
            np.zeros((3, 1)),
            [None] * 2,
            None,
            [None] * 2,
            None,
            IMAGE,
            AUDIO,
            np.zeros((2, 4), bool),
        )


def test_pretraining_trains_each_encoder_alone_then_freezes_it(tmp_path):
    train, validation = _splits(_separable_inputs(tmp_path))
    config = TrainConfig(
        strategy="late", width=16, epochs=3, batch_size=16, pretrain=True, augment=False
    )
    result = train_fusion(train, validation, config)
    assert set(result.pretraining) == set(MODALITIES)
    assert all(len(rows) >= 1 for rows in result.pretraining.values())
    alone = train_fusion(
        train, validation, dataclasses.replace(config, modalities=("audio",), pretrain=False)
    )
    # Stage 2 left the audio encoder exactly as stage 1 (the same single-modality run) made it.
    for name, value in alone.model.encoders["audio"].state_dict().items():
        assert torch.equal(result.model.encoders["audio"].state_dict()[name], value), name
    assert all(p.requires_grad for p in result.model.parameters())


def test_pretrained_single_modality_models_are_fused_frozen_and_the_rest_trained(tmp_path):
    train, validation = _splits(_separable_inputs(tmp_path))
    config = TrainConfig(
        strategy="attention", width=16, epochs=2, batch_size=16, pretrain=True, augment=False
    )
    audio = train_fusion(train, validation, single_modality(config, "audio"))
    assert audio.model.config["strategy"] == "late"  # one modality: encoder, head and prior
    result = train_fusion(train, validation, config, pretrained={"audio": audio.model})
    assert set(result.pretraining) == {"ehr", "text", "image"}  # audio was not trained again
    fused = result.model.encoders["audio"].state_dict()
    for name, value in audio.model.encoders["audio"].state_dict().items():
        assert torch.equal(fused[name], value), name
    with pytest.raises(ValueError, match="reads"):
        train_fusion(train, validation, config, pretrained={"audio": result.model})


def test_late_fusion_adds_the_evidence_of_each_modality():
    model = _model("late").eval()
    batch = _batch(_mixed_mask())
    outputs = model.outputs(batch)
    fusion = model.fusion
    expected = fusion.prior + (
        (outputs.unimodal - model.unimodal.prior) * fusion.weights
    ).masked_fill(~outputs.present, 0.0).sum(1)
    assert torch.allclose(outputs.logit, expected, atol=1e-6)

"""Training loop: class-weighted BCE, AdamW, modality dropout, early stopping on val AUROC.

One process, or several under torchrun: inside a process group (models/distributed.py) the same
loop runs data-parallel, and `batch_size` stays the global batch.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset

from clinfuse.models import distributed
from clinfuse.models.augment import augmentations
from clinfuse.models.data import AdmissionDataset
from clinfuse.models.fusion import FusionModel, FusionOutputs
from clinfuse.models.modalities import MODALITIES
from clinfuse.models.runtime import autocast, autocast_dtype, reproducible, resolve_device

GRAD_CLIP = 5.0  # a safety net against one bad batch, not a tuned hyper-parameter


@dataclass(frozen=True)
class TrainConfig:
    strategy: str = "late"
    width: int = 64
    epochs: int = 40
    # The global batch: under torchrun each of the W processes takes batch_size / W rows a step.
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 6
    # Share of train admissions whose modality is hidden per batch (the network fusion heads of
    # stacking.py set 0.2; a single-modality network has nothing to hide).
    modality_dropout: float = 0.0
    seed: int = 0
    num_workers: int = 0
    device: str = "auto"
    modalities: tuple[str, ...] = MODALITIES
    amp: bool = True
    dropout: float = 0.1
    # Weight of the auxiliary loss on each modality's own head (0: off). Without it, joint
    # training fits the easiest modality first and the slower encoders (the CNNs) stop learning
    # once the fused loss is low: "modality competition" (Wang et al., CVPR 2020; Du et al.,
    # ICML 2023).
    unimodal_loss: float = 1.0
    augment: bool = True  # MONAI augmentation of train images and spectrograms (augment.py)
    # Two stages for a model of several modalities: each encoder (with its unimodal head) is
    # first trained alone, with its own early stopping, then frozen while the fusion head learns
    # (see train_fusion). False: everything is trained jointly from the start.
    pretrain: bool = False
    # An exponential moving average of the weights is what is validated and kept; this is its
    # horizon in epochs (0: off). On a few hundred validation admissions AUROC jumps a few
    # points from one epoch to the next, and early stopping on the raw weights picks a lucky
    # epoch rather than a good model. In epochs, not steps, so that a tiny cohort's few steps
    # per epoch are not averaged into a model that never moves (see ema_decay).
    ema_epochs: float = 1.5
    # Encoder weights to start from, per modality: a state_dict file of that modality's encoder
    # (`FusionModel.encoders[m]`) that the user names, e.g. one pretrained on their own
    # archive. Nothing is ever downloaded.
    init_encoders: Mapping[str, str] = field(default_factory=dict)


@dataclass
class TrainResult:
    model: FusionModel  # best epoch's weights, on CPU, in eval mode
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    best_val_auroc: float = math.nan  # NaN when validation has a single class
    device: str = "cpu"
    # Stage one (config.pretrain): each modality's history and best validation AUROC alone.
    pretraining: dict[str, list[dict]] = field(default_factory=dict)
    pretrained_val_auroc: dict[str, float] = field(default_factory=dict)

    @property
    def train_seconds(self) -> float:
        """Seconds spent training, both stages when the encoders were pretrained."""
        stages = (self.history, *self.pretraining.values())
        return float(sum(row["seconds"] for rows in stages for row in rows))


def build_model(dataset: AdmissionDataset, config: TrainConfig) -> FusionModel:
    inputs = dataset.inputs
    model = FusionModel(
        ehr_dim=inputs.ehr_dim,
        text_dim=inputs.text_dim,
        image_shape=inputs.image_shape,
        audio_shape=inputs.audio_shape,
        width=config.width,
        strategy=config.strategy,
        modalities=tuple(config.modalities),
        dropout=config.dropout,
    )
    for modality, path in config.init_encoders.items():
        if modality in model.encoders:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.encoders[modality].load_state_dict(state)
    return model


def make_loader(
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    shuffle_seed: int | None = None,
) -> DataLoader:
    """A loader that shuffles from its own seeded generator (never the global RNG).

    Under a process group a shuffled loader reads this rank's share of each global batch of
    `batch_size` rows: a DistributedSampler seeded with `shuffle_seed` (see `_fit`'s set_epoch).
    """
    generator = None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed)
    sampler = None
    if shuffle_seed is not None and distributed.active():
        sampler, generator = distributed.shard_sampler(dataset, shuffle_seed), None
        batch_size = distributed.local_batch(batch_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle_seed is not None and sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,
    )


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def drop_modalities(
    mask: torch.Tensor, columns: torch.Tensor, rate: float, generator: torch.Generator
) -> torch.Tensor:
    """Hides each present modality (of `columns`) with probability `rate`, never all of them.

    A row that would lose everything keeps one of its modalities, chosen at random, so the
    model learns every subset without being trained on rows that carry no information.
    """
    if rate <= 0:
        return mask
    present = mask[:, columns]
    kept = present & (torch.rand(present.shape, generator=generator) >= rate)
    emptied = present.any(dim=1) & ~kept.any(dim=1)
    pick = torch.rand(present.shape, generator=generator).masked_fill(~present, -1.0).argmax(1)
    kept[emptied, pick[emptied]] = True
    mask = mask.clone()
    mask[:, columns] = kept
    return mask


def positive_weight(labels: np.ndarray) -> float:
    """negatives / positives, so both classes weigh the same in the loss (1 if either is absent)."""
    positives = float(np.sum(labels == 1))
    negatives = float(np.sum(labels == 0))
    return negatives / positives if positives and negatives else 1.0


def ema_decay(horizon_epochs: float, steps_per_epoch: int) -> float:
    """Per-step decay of a moving average that spans about `horizon_epochs` (0: no average).

    1 - 1 / (horizon in steps): 1.5 epochs of 22 steps (2,000 admissions, batch 64) is 0.97.
    """
    steps = horizon_epochs * steps_per_epoch
    return 1.0 - 1.0 / steps if steps > 1 else 0.0


def auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC, or None where it is undefined (a single class, or no rows)."""
    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


class _Trainer:
    """Model, optimiser and precision of one run: `train_epoch` and `validate` do one pass each.

    Under a process group, `step_loss` runs through DistributedDataParallel: gradients are
    averaged over ranks before the optimiser (and the moving average) sees them, so weights stay
    identical on every rank; each rank draws its own modality dropout and nn.Dropout masks.
    """

    def __init__(
        self,
        model: FusionModel,
        config: TrainConfig,
        device: torch.device,
        pos: float,
        steps_per_epoch: int,
        frozen: list[nn.Module] | None = None,
    ):
        self.model = model.to(device)
        self.step = distributed.data_parallel(self.model, self.step_loss, device)
        self.config = config
        self.device = device
        self.frozen = frozen or []  # kept in eval mode: no dropout noise, no updates
        self.dtype = autocast_dtype(device, config.amp)
        self.criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pos, device=device))
        trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            trainable, lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.mask_rng = torch.Generator().manual_seed(distributed.rank_seed(config.seed) + 1)
        decay = ema_decay(config.ema_epochs, steps_per_epoch)
        self.average = (
            AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
            if decay > 0
            else None
        )
        if distributed.world_size() > 1:
            torch.manual_seed(distributed.rank_seed(config.seed))  # this rank's dropout masks

    @property
    def evaluated(self) -> FusionModel:
        """The weights that are validated and kept: the moving average when there is one."""
        return self.model if self.average is None else self.average.module

    def train_epoch(self, loader: DataLoader) -> float:
        self.model.train()
        for module in self.frozen:
            module.eval()
        total, count = 0.0, 0
        for batch in loader:
            batch["mask"] = drop_modalities(
                batch["mask"],
                self.model.columns.cpu(),
                self.config.modality_dropout,
                self.mask_rng,
            )
            batch = to_device(batch, self.device)
            loss = self.step(batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), GRAD_CLIP)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            distributed.sync_buffers(self.model)
            if self.average is not None:
                self.average.update_parameters(self.model)
            total += float(loss.detach()) * len(batch["label"])
            count += len(batch["label"])
        total, rows = distributed.sum_over_ranks(total, count)
        return total / max(rows, 1)

    def step_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One training forward pass, down to the loss."""
        with autocast(self.device, self.dtype):
            outputs = self.model.outputs(batch)
        return self.loss(outputs, batch["label"])

    def loss(self, outputs: FusionOutputs, labels: torch.Tensor) -> torch.Tensor:
        """Weighted BCE of the fused logit, plus the unimodal heads' mean BCE where present.

        Under a process group each modality's mean is over the global batch's rows that have
        it: this rank's sum divided by the global count / world size, so that the average over
        ranks (which DistributedDataParallel's gradient is) is the one-process mean.
        """
        loss = self.criterion(outputs.logit.float(), labels)
        if self.config.unimodal_loss <= 0 or self.frozen:
            return loss
        present = outputs.present.float()
        each = nn.functional.binary_cross_entropy_with_logits(
            outputs.unimodal.float(),
            labels[:, None].expand_as(present),
            pos_weight=self.criterion.pos_weight,
            reduction="none",
        )
        rows = distributed.mean_over_ranks(present.sum(0))
        per_modality = (each * present).sum(0) / rows.clamp_min(1.0 / distributed.world_size())
        used = rows > 0
        if not used.any():
            return loss
        return loss + self.config.unimodal_loss * per_modality[used].mean()

    def validate(self, loader: DataLoader) -> tuple[float, float | None]:
        logits, labels = predict_logits(self.evaluated, loader, self.device, self.dtype)
        if not len(labels):
            return math.nan, None
        loss = nn.functional.binary_cross_entropy_with_logits(
            torch.from_numpy(logits),
            torch.from_numpy(labels),
            pos_weight=self.criterion.pos_weight.cpu(),
        )
        return float(loss), auroc(labels, logits)


def selection_score(row: dict) -> float:
    """What early stopping maximises: validation AUROC, else (one class) -validation loss."""
    if row["val_auroc"] is not None:
        return row["val_auroc"]
    if math.isfinite(row["val_loss"]):
        return -row["val_loss"]
    return -row["train_loss"]


def train_fusion(
    train: AdmissionDataset,
    validation: AdmissionDataset,
    config: TrainConfig,
    on_epoch: Callable[[dict], None] | None = None,
    pretrained: Mapping[str, FusionModel] | None = None,
) -> TrainResult:
    """Trains a FusionModel; returns the weights of the epoch with the best validation AUROC.

    With `config.pretrain` and several modalities, training has two stages:
    1. each modality's encoder and unimodal head come from a single-modality model: the one
       given in `pretrained` (e.g. the run's baselines, trained by this same function with
       `single_modality(config, m)`), else one trained here the same way, each stopped at its
       own best validation AUROC;
    2. the encoders and unimodal heads are frozen and only the fusion head learns.
    Joint training from scratch lets the quickest modalities (labs, notes: best by epoch 2-3)
    stop training while the CNNs are still learning, and then overfits them; staged, every
    encoder gets the epochs it needs. `history` and `on_epoch` cover stage 2 (the only stage
    otherwise); the histories of encoders trained here in stage 1 are in `pretraining`.

    The validation loss uses the same class weighting as training, so the two are comparable.
    Each history row is {epoch, train_loss, val_loss, val_auroc (None: one class), seconds}.
    """
    labels = train.labels
    if labels is None or not len(train):
        raise ValueError("train_fusion needs a non-empty, labelled training set")
    device = resolve_device(config.device)
    stage_one: dict[str, TrainResult] = {}
    encoders: dict[str, FusionModel] = {}
    if config.pretrain and len(config.modalities) > 1:
        given = {m: _reads_only(model, m) for m, model in (pretrained or {}).items()}
        for modality in config.modalities:
            if modality in given:
                encoders[modality] = given[modality]
                continue
            alone = single_modality(config, modality)
            stage_one[modality] = _train(train, validation, alone, device, None)
            encoders[modality] = stage_one[modality].model
    result = _train(train, validation, config, device, on_epoch, encoders)
    result.model.requires_grad_(True)  # frozen only for stage 2; fine-tuning it stays possible
    result.pretraining = {m: r.history for m, r in stage_one.items()}
    result.pretrained_val_auroc = {m: r.best_val_auroc for m, r in stage_one.items()}
    return result


def single_modality(config: TrainConfig, modality: str) -> TrainConfig:
    """The configuration of `modality`'s model alone, whatever the fusion strategy: its encoder,
    unimodal head and prior (late fusion of one modality), without modality dropout.

    So a run's baselines, and the encoders staged fusion freezes, are the same models for every
    strategy: changing the strategy retrains a fusion head, nothing else.
    """
    return replace(config, modalities=(modality,), strategy="late", modality_dropout=0.0)


def _reads_only(model: FusionModel, modality: str) -> FusionModel:
    if tuple(model.modalities) != (modality,):
        raise ValueError(f"pretrained[{modality!r}] reads {model.modalities}, not ({modality!r},)")
    return model


def _train(
    train: AdmissionDataset,
    validation: AdmissionDataset,
    config: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[dict], None] | None,
    pretrained: Mapping[str, FusionModel] | None = None,
) -> TrainResult:
    # Augment only the encoders that learn here. A frozen encoder's evidence is weighed by the
    # fusion head as it will be at inference, on unaltered inputs (measured: +0.001-0.003 test
    # AUROC staged, and the head trains 3x faster without the transforms).
    learning = tuple(m for m in config.modalities if m not in (pretrained or {}))
    if config.augment and learning:
        seed = distributed.rank_seed(config.seed)
        train = train.augmented(augmentations(train.inputs.image_shape, seed, learning))
    with reproducible(device, config.seed):
        model = build_model(train, config)
        frozen = _load_pretrained(model, pretrained or {})
        train_loader = make_loader(
            train, config.batch_size, device, config.num_workers, shuffle_seed=config.seed
        )
        pos = positive_weight(train.labels)
        trainer = _Trainer(model, config, device, pos, len(train_loader), frozen)
        val_loader = make_loader(validation, 256, device, config.num_workers)
        result = _fit(trainer, train_loader, val_loader, config, on_epoch)
    result.device = str(device)
    return result


def _load_pretrained(model: FusionModel, pretrained: Mapping[str, FusionModel]) -> list[nn.Module]:
    """Copies each single-modality model's encoder and unimodal head in; returns them frozen."""
    frozen: list[nn.Module] = []
    for position, modality in enumerate(model.modalities):
        if modality not in pretrained:
            continue
        alone = pretrained[modality]
        pairs = (
            (model.encoders[modality], alone.encoders[modality]),
            (model.unimodal.heads[position], alone.unimodal.heads[0]),
        )
        for target, source in pairs:
            target.load_state_dict(source.state_dict())
            target.requires_grad_(False)
            frozen.append(target)
    return frozen


def _fit(
    trainer: _Trainer,
    train_loader: DataLoader,
    val_loader: DataLoader,
    config: TrainConfig,
    on_epoch: Callable[[dict], None] | None,
) -> TrainResult:
    model = trainer.model
    history: list[dict] = []
    best_score, best_epoch, best_state = -math.inf, 0, None
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        distributed.set_epoch(train_loader, epoch)
        train_loss = trainer.train_epoch(train_loader)
        # Rank 0 decides, so that every rank stops at the same epoch and keeps the same weights.
        val_loss, val_auroc = distributed.from_rank_zero(lambda: trainer.validate(val_loader))
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_auroc": val_auroc,
            "seconds": time.perf_counter() - start,
        }
        history.append(row)
        if on_epoch is not None:
            on_epoch(dict(row))
        if best_state is None or selection_score(row) > best_score:
            best_score, best_epoch = selection_score(row), epoch
            kept = trainer.evaluated.state_dict()
            best_state = {k: v.detach().cpu().clone() for k, v in kept.items()}
        elif epoch - best_epoch >= config.patience:
            break
    model.load_state_dict(best_state)
    model.cpu().eval()
    best_auroc = history[best_epoch - 1]["val_auroc"]
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        best_val_auroc=math.nan if best_auroc is None else best_auroc,
    )


@torch.no_grad()
def predict_logits(
    model: FusionModel, loader: DataLoader, device: torch.device, dtype: torch.dtype | None
) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels) over the loader, in dataset order; the model must already be on device."""
    model.eval()
    logits, labels = [], []
    for batch in loader:
        labels.append(batch["label"].numpy())
        with autocast(device, dtype):
            logits.append(model(to_device(batch, device)).float().cpu().numpy())
    if not logits:
        return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
    return np.concatenate(logits), np.concatenate(labels)


def predict_proba(
    model: FusionModel,
    dataset: Dataset,
    batch_size: int = 256,
    device: str = "auto",
    num_workers: int = 0,
    amp: bool = True,
) -> np.ndarray:
    """P(label = 1) per admission of `dataset`, (N,) float64, in dataset order.

    The model is returned to its original device and train/eval mode afterwards.
    """
    target = resolve_device(device)
    home = next(model.parameters()).device
    was_training = model.training
    loader = make_loader(dataset, batch_size, target, num_workers)
    try:
        logits, _ = predict_logits(model.to(target), loader, target, autocast_dtype(target, amp))
    finally:
        model.to(home).train(was_training)
    return torch.sigmoid(torch.from_numpy(logits).double()).numpy()

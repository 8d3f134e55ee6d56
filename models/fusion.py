"""The fusion model: per-modality encoders, then early, late or attention fusion.

A missing modality is masked out everywhere: its encoder only ever sees the admissions that
have it (rows are gathered, encoded, and scattered back into zeros), and each fusion head
ignores its embedding. So what a missing slot holds can never change a prediction, and a
single-modality model still scores admissions without its modality (from a learned prior).

Every strategy also carries one head per modality (`UnimodalHeads`): late fusion sums their
evidence, and training supervises each one on its own modality (`TrainConfig.unimodal_loss`),
which keeps a strong modality from starving the others' encoders of gradient.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from clinfuse.models.encoders import build_encoder
from clinfuse.models.modalities import MODALITIES

STRATEGIES = ("early", "late", "attention")


class FusionOutputs(NamedTuple):
    logit: torch.Tensor  # (B,) the fused prediction
    unimodal: torch.Tensor  # (B, M) each modality's own logit; only meaningful where present
    present: torch.Tensor  # (B, M) bool


def _head(in_dim: int, width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, width), nn.GELU(), nn.Dropout(dropout), nn.Linear(width, 1)
    )


class EarlyFusion(nn.Module):
    """Concatenated embeddings (zeros where missing) plus the mask itself, into one MLP."""

    def __init__(self, count: int, width: int, dropout: float):
        super().__init__()
        self.head = _head(count * width + count, width, dropout)

    def forward(
        self, embeddings: torch.Tensor, present: torch.Tensor, evidence: torch.Tensor
    ) -> torch.Tensor:
        flat = embeddings.flatten(1)
        return self.head(torch.cat([flat, present.to(flat.dtype)], dim=1)).squeeze(1)


class UnimodalHeads(nn.Module):
    """Each modality's own evidence: a logit offset from one modality's embedding alone.

    `prior + evidence[:, i]` is the unimodal model of modality i. Training supervises it on the
    admissions that have the modality (an auxiliary loss, see training.py), so every encoder
    learns to predict on its own instead of leaning on the strongest modality; late fusion sums
    these offsets.
    """

    def __init__(self, count: int, width: int, dropout: float):
        super().__init__()
        self.heads = nn.ModuleList(_head(width, width, dropout) for _ in range(count))
        self.prior = nn.Parameter(torch.zeros(()))  # the logit with no evidence at all

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, count) float32 evidence per modality (meaningless where a modality is absent)."""
        return torch.cat([h(embeddings[:, i]) for i, h in enumerate(self.heads)], dim=1).float()


class LateFusion(nn.Module):
    """The prior plus the sum of the present modalities' evidence, each with a learned weight.

    A sum, not an average: evidence from independent sources adds up in log-odds (naive Bayes),
    so an admission with three concordant modalities is more certain than one with a single
    modality, and a missing modality simply contributes nothing.
    """

    def __init__(self, count: int, width: int, dropout: float):
        super().__init__()
        self.weights = nn.Parameter(torch.ones(count))
        self.prior = nn.Parameter(torch.zeros(()))

    def forward(
        self, embeddings: torch.Tensor, present: torch.Tensor, evidence: torch.Tensor
    ) -> torch.Tensor:
        weighted = (evidence * self.weights).masked_fill(~present, 0.0)
        return self.prior + weighted.sum(dim=1)


class AttentionFusion(nn.Module):
    """A small transformer over modality tokens plus a CLS token that is never masked."""

    def __init__(self, count: int, width: int, dropout: float, layers: int = 2):
        super().__init__()
        self.type_tokens = nn.Parameter(torch.randn(count, width) * 0.02)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d_model=width,
            nhead=4 if width % 4 == 0 else 1,
            dim_feedforward=2 * width,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,  # pre-norm: stable without warm-up at these sizes
        )
        # No nested tensors: keeps results identical between train and eval code paths.
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)

    def forward(
        self, embeddings: torch.Tensor, present: torch.Tensor, evidence: torch.Tensor
    ) -> torch.Tensor:
        tokens = embeddings + self.type_tokens.to(embeddings.dtype)
        cls = self.cls.to(tokens.dtype).expand(len(tokens), -1, -1)
        padding = torch.cat([present.new_zeros(len(present), 1), ~present], dim=1)
        encoded = self.encoder(torch.cat([cls, tokens], dim=1), src_key_padding_mask=padding)
        return self.out(self.norm(encoded[:, 0])).squeeze(1)


FUSIONS = {"early": EarlyFusion, "late": LateFusion, "attention": AttentionFusion}


class FusionModel(nn.Module):
    """Predicts one logit per admission from any subset of `modalities`.

    `forward(batch)` reads batch[m] for m in `modalities` and batch["mask"], (B, 4) bool in
    MODALITIES order; other keys are ignored. `config` holds the constructor arguments so that
    `FusionModel(**model.config)` plus the state_dict rebuilds the model.
    """

    def __init__(
        self,
        ehr_dim: int,
        text_dim: int,
        image_shape: tuple[int, ...],
        audio_shape: tuple[int, ...],
        width: int = 64,
        strategy: str = "attention",
        modalities: tuple[str, ...] = MODALITIES,
        dropout: float = 0.1,
    ):
        super().__init__()
        modalities = tuple(modalities)
        if strategy not in FUSIONS:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if not modalities or len(set(modalities)) != len(modalities):
            raise ValueError(f"modalities must be distinct and non-empty, got {modalities}")
        unknown = set(modalities) - set(MODALITIES)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}")
        self.config = {
            "ehr_dim": int(ehr_dim),
            "text_dim": int(text_dim),
            "image_shape": tuple(int(s) for s in image_shape),
            "audio_shape": tuple(int(s) for s in audio_shape),
            "width": int(width),
            "strategy": strategy,
            "modalities": modalities,
            "dropout": float(dropout),
        }
        self.modalities = modalities
        self.width = int(width)
        self.register_buffer(
            "columns", torch.tensor([MODALITIES.index(m) for m in modalities]), persistent=False
        )
        shapes = {k: self.config[k] for k in ("ehr_dim", "text_dim", "image_shape", "audio_shape")}
        self.encoders = nn.ModuleDict(
            {m: build_encoder(m, **shapes, width=width, dropout=dropout) for m in modalities}
        )
        self.unimodal = UnimodalHeads(len(modalities), self.width, dropout)
        self.fusion = FUSIONS[strategy](len(modalities), self.width, dropout)

    def present(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, len(modalities)) bool: which of this model's modalities each admission has."""
        return batch["mask"].to(self.columns.device).bool().index_select(1, self.columns)

    def embed(self, batch: dict[str, torch.Tensor], present: torch.Tensor) -> torch.Tensor:
        """(B, len(modalities), width); rows without a modality stay exactly zero."""
        slots = []
        for position, modality in enumerate(self.modalities):
            rows = present[:, position].nonzero().squeeze(1)
            slot = torch.zeros(len(present), self.width, device=present.device)
            if len(rows):
                # float32 whatever autocast chose: the heads mix slots, and zeros are exact.
                encoded = self.encoders[modality](batch[modality].index_select(0, rows))
                slot = slot.index_copy(0, rows, encoded.float())
            slots.append(slot)
        return torch.stack(slots, dim=1)

    def outputs(self, batch: dict[str, torch.Tensor]) -> FusionOutputs:
        """The fused logit and, for the auxiliary loss, each modality's own logit."""
        present = self.present(batch)
        embeddings = self.embed(batch, present)
        evidence = self.unimodal(embeddings)
        logit = self.fusion(embeddings, present, evidence).float()
        return FusionOutputs(logit, self.unimodal.prior + evidence, present)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.outputs(batch).logit

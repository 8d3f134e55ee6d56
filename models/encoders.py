"""One encoder per modality, each mapping its input to a `width`-dimensional embedding.

Every normalisation layer here is per sample (LayerNorm, GroupNorm), never BatchNorm: the
fusion model encodes only the admissions that have a modality, so a batch can hold a single
image, and an admission's embedding must not depend on which others share its batch (train and
eval then behave alike, and a missing modality's zeros never leak into batch statistics).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class VectorEncoder(nn.Module):
    """Two-layer MLP over a feature vector."""

    def __init__(self, in_dim: int, width: int, dropout: float = 0.1, clip: float | None = None):
        super().__init__()
        self.clip = clip
        self.net = nn.Sequential(
            nn.Linear(in_dim, 2 * width),
            nn.LayerNorm(2 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, width),
            nn.LayerNorm(width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.clip is not None:
            x = x.clamp(-self.clip, self.clip)
        return self.net(x)


class EhrEncoder(VectorEncoder):
    """Lab aggregates, missing indicators, age and sex (robust-scaled upstream)."""

    def __init__(self, in_dim: int, width: int, dropout: float = 0.1):
        # Robust scaling leaves heavy tails (a creatinine of 40 IQRs); clipping keeps one
        # implausible value from dominating the first layer.
        super().__init__(in_dim, width, dropout, clip=10.0)


class TextEncoder(VectorEncoder):
    """An MLP head over a precomputed note embedding (sentence encoder or TF-IDF/SVD)."""


def stem_stride(height: int, width: int) -> int:
    """Downsampling of the first convolution, chosen by input area to bound CPU cost.

    64 x 64 images keep stride 2 (fine detail matters, and they are cheap); 224 px images and
    64 x 251 spectrograms get stride 4 so a 2-core CPU epoch stays in seconds; tiny test
    inputs keep full resolution.
    """
    area = height * width
    if area <= 32 * 32:
        return 1
    return 2 if area <= 96 * 96 else 4


class ConvEncoder(nn.Module):
    """MONAI's 2-D ResNet-10 topology with narrow stages and GroupNorm, then a linear map.

    MONAI's DenseNet121 and stock ResNets cost 10-100x more than a 2-core CPU can afford per
    epoch at 64 px; the same ResNet with stages 16-32-64-128 trains an epoch of ~1,400 images
    in well under a second there, and scales to 224 px on a GPU unchanged.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        width: int,
        dropout: float = 0.1,
        stages: tuple[int, ...] = (16, 32, 64, 128),
    ):
        super().__init__()
        # Imported here: `import monai` takes seconds, and most processes importing
        # clinfuse.models (Dagster definitions, serving) never build a CNN.
        from monai.networks.nets import ResNet

        channels, height, width_px = (int(s) for s in input_shape)
        stride = stem_stride(height, width_px)
        self.trunk = ResNet(
            "basic",
            [1, 1, 1, 1],
            list(stages),
            spatial_dims=2,
            n_input_channels=channels,
            conv1_t_size=2 * stride + 1,
            conv1_t_stride=stride,
            feed_forward=False,
            norm=("group", {"num_groups": math.gcd(8, stages[0])}),
        )
        self.project = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(stages[-1], width), nn.LayerNorm(width)
        )

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.trunk(self.normalise(x)))


class ImageEncoder(ConvEncoder):
    """Chest images, (1, S, S) in [0, 1]."""

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - 0.5) * 4.0  # [0, 1] -> [-2, 2], about unit scale for typical radiographs


class AudioEncoder(ConvEncoder):
    """Lung-sound log-mel spectrograms, (1, n_mels, frames) in dB."""

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        # A fixed affine rather than per-recording standardisation: loudness may carry signal
        # (crackles, wheeze), and the dB range (-100..+20) is fixed by the ingest.
        return (x + 40.0) / 40.0


def build_encoder(
    modality: str,
    ehr_dim: int,
    text_dim: int,
    image_shape: tuple[int, ...],
    audio_shape: tuple[int, ...],
    width: int,
    dropout: float,
) -> nn.Module:
    if modality == "ehr":
        return EhrEncoder(ehr_dim, width, dropout)
    if modality == "text":
        return TextEncoder(text_dim, width, dropout)
    if modality == "image":
        return ImageEncoder(image_shape, width, dropout)
    if modality == "audio":
        return AudioEncoder(audio_shape, width, dropout)
    raise ValueError(f"unknown modality {modality!r}")

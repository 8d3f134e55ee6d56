"""Hand-crafted summaries of a film and of a spectrogram: what a cheap linear model reads.

A CNN needs hundreds of films to learn a sign; a regularized linear model over fixed
multi-scale statistics needs far fewer, and covers the sign forms a hospital's films show: a
focal sign (a cell of the grid is brighter), a structure that grows or changes shape (row and
column profiles move), a diffuse texture (local contrast and high-frequency energy rise).
Recordings likewise: transient events (frame-to-frame jumps), an extra or missing sound in a
periodic cycle (the modulation spectrum of the energy envelope), a continuous tone (a band
whose energy stays high). Both are pure functions of a batch, so training and serving share them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.nn import functional as F

PROFILE_BINS = 32
HISTOGRAM_BINS = 16
MODULATION_BINS = 24


def _cell_std(x: torch.Tensor, cells: int) -> torch.Tensor:
    mean = F.adaptive_avg_pool2d(x, cells)
    square = F.adaptive_avg_pool2d(x * x, cells)
    return (square - mean * mean).clamp_min(0).sqrt()


def image_statistics(images: torch.Tensor) -> np.ndarray:
    """(B, 1, S, S) in [0, 1] -> (B, F) float32: grid means and contrasts, profiles, histogram."""
    x = images.float()
    blurred = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    detail = (x - blurred).abs()
    gradient = (x[..., 1:, :] - x[..., :-1, :]).abs()[..., :, :-1] + (
        x[..., :, 1:] - x[..., :, :-1]
    ).abs()[..., :-1, :]
    columns = F.adaptive_avg_pool1d(x.mean(dim=2), PROFILE_BINS)  # (B, 1, bins)
    rows = F.adaptive_avg_pool1d(x.mean(dim=3), PROFILE_BINS)
    histogram = torch.stack(
        [((x >= lo) & (x < lo + 1 / HISTOGRAM_BINS)).float().mean(dim=(1, 2, 3))
         for lo in np.linspace(0, 1, HISTOGRAM_BINS, endpoint=False)],
        dim=1,
    )  # fmt: skip
    parts = [
        F.adaptive_avg_pool2d(x, 4),
        F.adaptive_avg_pool2d(x, 8),
        _cell_std(x, 4),
        F.adaptive_avg_pool2d(detail, 4),
        F.adaptive_avg_pool2d(gradient, 4),
        columns,
        rows,
    ]
    flat = [p.flatten(1) for p in parts] + [histogram]
    return torch.cat(flat, dim=1).numpy().astype(np.float32)


def recording_statistics(spectrograms: torch.Tensor) -> np.ndarray:
    """(B, 1, mels, frames) log-mel -> (B, F) float32: band levels, transients, modulation."""
    x = spectrograms.float()[:, 0]  # (B, M, T)
    band_mean = x.mean(dim=2)
    band_std = x.std(dim=2)
    band_max = x.amax(dim=2)
    band_high = torch.quantile(x, 0.9, dim=2)
    band_jump = (x[:, :, 1:] - x[:, :, :-1]).abs().mean(dim=2)
    envelope = x.mean(dim=1)  # (B, T) energy over time
    centred = envelope - envelope.mean(dim=1, keepdim=True)
    spread = centred.std(dim=1, keepdim=True).clamp_min(1e-6)
    jumps = (envelope[:, 1:] - envelope[:, :-1]).abs()
    spectrum = torch.fft.rfft(centred, dim=1).abs()[:, 1:]  # drop the DC term
    modulation = F.adaptive_avg_pool1d(spectrum[:, None], MODULATION_BINS)[:, 0]
    modulation = torch.log1p(modulation / spread)
    envelope_stats = torch.stack(
        [
            spread[:, 0],
            jumps.mean(dim=1),
            jumps.amax(dim=1),
            (centred > 2 * spread).float().mean(dim=1),
            (centred < -2 * spread).float().mean(dim=1),
        ],
        dim=1,
    )
    parts = [band_mean, band_std, band_max, band_high, band_jump, modulation, envelope_stats]
    return torch.cat(parts, dim=1).numpy().astype(np.float32)


STATISTICS = {"image": image_statistics, "audio": recording_statistics}

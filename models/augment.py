"""Training-time augmentation of images and spectrograms: MONAI transforms, train split only.

A CNN trained from scratch on about a thousand films memorises them within a few epochs
(training loss keeps falling while validation AUROC peaks at epoch 2-3 and then drops), so the
training split sees a slightly different film each epoch: a small rotation, shift and zoom (a
patient is never positioned twice alike), exposure changes, and sensor noise. No flips: the heart
is on the left of a frontal film, and a flipped one is an anatomy that does not occur.

Spectrograms get a circular shift in time (a recording may start anywhere in the breathing
cycle) and a small gain change in dB. No time or frequency masking: a masked band can erase the
very crackles the label depends on.

Validation, test and serving never augment. Each transform chain is seeded, so a CPU run stays
reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch

Augment = Callable[[torch.Tensor], torch.Tensor]


class TimeShift:
    """Rolls a (C, F, T) spectrogram by a random number of frames along time."""

    def __init__(self, max_fraction: float = 0.5, seed: int = 0) -> None:
        self.max_fraction = max_fraction
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        limit = int(x.shape[-1] * self.max_fraction)
        if limit < 1:
            return x
        return torch.roll(x, int(self.rng.integers(-limit, limit + 1)), dims=-1)


class _Tensor:
    """A MONAI chain that hands back a plain float32 tensor (not a MetaTensor); picklable, so
    DataLoader workers can take it."""

    def __init__(self, chain: Callable, clamp: tuple[float, float] | None = None) -> None:
        self.chain = chain
        self.clamp = clamp

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(self.chain(x), dtype=torch.float32).as_subclass(torch.Tensor)
        return out if self.clamp is None else out.clamp(*self.clamp)


def image_augment(size: int, seed: int) -> Augment:
    """Random pose, exposure and noise for a (1, size, size) film in [0, 1]."""
    from monai.transforms import (
        Compose,
        RandAdjustContrast,
        RandAffine,
        RandGaussianNoise,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    shift = 0.06 * size  # pixels
    chain = Compose(
        [
            RandAffine(
                prob=0.9,
                rotate_range=0.12,  # radians, about 7 degrees
                translate_range=(shift, shift),
                scale_range=(0.08, 0.08),
                padding_mode="border",
            ),
            RandScaleIntensity(factors=0.15, prob=0.5),
            RandShiftIntensity(offsets=0.05, prob=0.5),
            RandAdjustContrast(gamma=(0.8, 1.25), prob=0.3),
            RandGaussianNoise(prob=0.3, std=0.02),
        ]
    )
    chain.set_random_state(seed=seed)
    return _Tensor(chain, clamp=(0.0, 1.0))


def audio_augment(seed: int) -> Augment:
    """Random start in time and a gain change of up to +-3 dB for a (1, F, T) log-mel."""
    from monai.transforms import Compose, RandShiftIntensity

    chain = Compose([TimeShift(seed=seed), RandShiftIntensity(offsets=3.0, prob=0.5)])
    chain.set_random_state(seed=seed + 1)
    return _Tensor(chain)


def augmentations(
    image_shape: tuple[int, ...], seed: int, modalities: Iterable[str] = ("image", "audio")
) -> dict[str, Augment]:
    """Training transforms of `modalities` (those without one are left out), as
    AdmissionDataset's `augment` takes them."""
    builders = {
        "image": lambda: image_augment(int(image_shape[-1]), seed),
        "audio": lambda: audio_augment(seed),
    }
    return {m: builders[m]() for m in modalities if m in builders}

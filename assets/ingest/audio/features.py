"""Waveform -> fixed-shape log-mel spectrogram, shared by ingest and serving.

Every recording, whatever its rate, width or channel count, becomes one float32 array of shape
(1, n_mels, settings.frames): mono (mean of channels), resampled to settings.sample_rate, the
first settings.seconds kept (shorter clips zero-padded at the end), power mel spectrogram,
decibels against a fixed reference.
"""

from __future__ import annotations

import math
from functools import lru_cache

# Imported eagerly, on purpose: librosa loads lazily, and the first stft would import
# librosa.util.utils, which compiles numba kernels (~0.7 s), besides scipy's FFT. Paying that at
# import lets the ingest pool's fork server (pool.py) load this module once instead of every
# worker paying it on its first recording. audio_reader imports this module only when it
# decodes, so loading the Dagster definitions does not pay it.
import librosa.util.utils  # noqa: F401
import numpy as np
import soxr
from librosa import power_to_db, stft
from librosa.filters import mel

from clinfuse.assets.settings import AudioSettings

# Fixed dB reference: mel power 1.0 of a signal in soundfile's [-1, 1) scale (every PCM width and
# mu-law is scaled to it), so a full-scale tone peaks near +23 dB and a 10x quieter one 20 dB
# lower. A per-recording reference (ref=np.max) would erase loudness; a quiet recording (a faint
# murmur, a weak cough) must stay distinguishable from a loud one. No top_db clipping either: it
# too is relative to each recording's maximum.
REFERENCE_POWER = 1.0
# Floor: -100 dB. Digital silence and zero padding map to it instead of -inf.
MIN_POWER = 1e-10
# Extra input read beyond `seconds` so that the resampler's filter sees real signal, not the end
# of the buffer, at the cut: soxr's HQ filter spans a few ms of input; 0.25 s is ample.
RESAMPLE_MARGIN_S = 0.25


def target_samples(settings: AudioSettings) -> int:
    """Samples in the fixed-length clip (the same rounding as AudioSettings.frames)."""
    return int(settings.sample_rate * settings.seconds)


def frames_to_read(original_rate: int, settings: AudioSettings) -> int:
    """How many input frames the features depend on: `seconds` plus the resampling margin."""
    return math.ceil((settings.seconds + RESAMPLE_MARGIN_S) * original_rate)


def to_mono(wave: np.ndarray) -> np.ndarray:
    """(frames, channels) -> (frames,) float32, the mean of the channels.

    The mean (not the first channel) keeps whatever a multi-microphone device captured on any
    channel; non-finite samples of float files become 0 so that one bad sample cannot turn a
    whole spectrogram into NaN.
    """
    mono = wave[:, 0] if wave.shape[1] == 1 else wave.mean(axis=1, dtype=np.float32)
    if not np.isfinite(mono).all():
        mono = np.nan_to_num(mono, nan=0.0, posinf=0.0, neginf=0.0)
    return np.ascontiguousarray(mono, dtype=np.float32)


def resample(mono: np.ndarray, original_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited resampling to target_rate: exactly librosa.resample(res_type="soxr_hq").

    soxr (libsoxr, HQ) rather than scipy.signal.resample_poly: both are deterministic (no
    dithering of float input, no randomness) and take any ratio (44.1 kHz, an odd 1234 Hz), but
    soxr is about 4x faster on 48 kHz -> 4 kHz, most of the per-file cost, and its filter does
    not grow with awkward ratios the way a polyphase filter for up/down = 4000/44101 does.
    soxr is called directly, as librosa.resample does, because importing librosa's resampler
    pulls in scipy.signal and numba: seconds per worker process for nothing. The output length
    is librosa's, ceil(n * target / original), so a 5-sample clip still yields a sample.
    """
    if original_rate == target_rate:
        return mono
    length = math.ceil(len(mono) * target_rate / original_rate)
    out = soxr.resample(mono, original_rate, target_rate, quality="soxr_hq")
    return fit_length(np.asarray(out, dtype=np.float32), length)


def fit_length(signal: np.ndarray, samples: int) -> np.ndarray:
    """The first `samples` samples; a shorter signal is zero-padded at the end.

    The start is kept because that is where a clinician starts listening and where a triggered
    recording (a cough, an auscultation) begins; zero padding is silence, which maps to the dB
    floor, not to an invented signal.
    """
    if len(signal) >= samples:
        return signal[:samples]
    return np.pad(signal, (0, samples - len(signal)))


def log_mel(signal: np.ndarray, settings: AudioSettings) -> np.ndarray:
    """(samples,) at settings.sample_rate -> (1, n_mels, frames) float32 dB.

    center=True with constant (zero) padding: frames = 1 + samples // hop_length, which is
    AudioSettings.frames, and a clip shorter than n_fft is already padded to `seconds` here.
    The power is exactly `librosa.feature.melspectrogram(y=signal, sr=..., n_fft=...,
    hop_length=..., n_mels=..., fmax=sr / 2, center=True, pad_mode="constant", power=2.0)`,
    computed as librosa does, but with the mel filter bank built once per settings
    (`mel_filters`) instead of once per call: building it was a third of a recording's CPU.
    """
    spectrum = (
        np.abs(
            stft(
                signal,
                n_fft=settings.n_fft,
                hop_length=settings.hop_length,
                center=True,
                pad_mode="constant",
            )
        )
        ** 2.0
    )
    filters = mel_filters(settings.sample_rate, settings.n_fft, settings.n_mels)
    power = np.einsum("...ft,mf->...mt", spectrum, filters, optimize=True)
    db = power_to_db(power, ref=REFERENCE_POWER, amin=MIN_POWER, top_db=None)
    return db.astype(np.float32, copy=False)[np.newaxis]


@lru_cache(maxsize=8)
def mel_filters(sample_rate: int, n_fft: int, n_mels: int) -> np.ndarray:
    """librosa's mel filter bank up to Nyquist, (n_mels, 1 + n_fft // 2), read-only."""
    filters = mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmax=sample_rate / 2)
    filters.flags.writeable = False  # shared by every call: nobody may change it
    return filters


def waveform_features(wave: np.ndarray, original_rate: int, settings: AudioSettings) -> np.ndarray:
    """(frames, channels) at original_rate -> (1, n_mels, settings.frames) float32 log-mel."""
    mono = to_mono(wave)
    resampled = resample(mono, original_rate, settings.sample_rate)
    features = log_mel(fit_length(resampled, target_samples(settings)), settings)
    expected = (1, settings.n_mels, settings.frames)
    if features.shape != expected:  # a settings combination librosa frames differently
        raise AssertionError(f"log-mel shape {features.shape} != {expected}")
    return features

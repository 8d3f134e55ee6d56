"""Lung-sound-like recordings (WAV PCM16/PCM24/float32, FLAC) and audio/manifest.csv rows.

The label's only trace is the task's sign (tasks.AUDIO_SIGNS): the number of crackles
(evidence.crackle_count: short transients in the 500-1200 Hz band, which survives the
pipeline's resampling to 4 kHz), a third heart sound in a share of the heart cycles, beats
dropped from a share of the cycles, or a wheeze (a tone whose duration and loudness follow the
score). Breathing noise, the heart's rate, mains hum, gain, sample rate, channels and encoding
are label-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy import signal

MANIFEST_COLUMNS = ("path", "subject_id", "recorded_at", "hadm_id", "site")
SAMPLE_RATES = (4000, 8000, 11025, 16000, 22050, 44100, 48000)
SAMPLE_RATE_WEIGHTS = (0.35, 0.32, 0.08, 0.15, 0.05, 0.03, 0.02)  # small files: mostly low rates
ENCODINGS = (  # (container, subtype, extension)
    ("WAV", "PCM_16", ".wav"),
    ("WAV", "PCM_24", ".wav"),
    ("WAV", "FLOAT", ".wav"),
    ("FLAC", "PCM_16", ".flac"),
)
ENCODING_WEIGHTS = (0.4, 0.2, 0.2, 0.2)
SITES = (
    "right lower posterior", "left lower posterior", "right upper anterior",
    "left upper anterior", "right middle lateral", "trachea",
)  # fmt: skip


@dataclass(frozen=True)
class RecordingSpec:
    path: str  # relative to the landing zone: audio/...
    subject_id: int
    recorded_at: datetime
    manifest_hadm_id: int | None  # written to the manifest; None leaves linking to the time
    site: str
    seconds: float
    crackles: int
    sample_rate: int
    channels: int
    container: str
    subtype: str
    sound_seed: tuple[int, ...]
    sign: str = "crackles"  # crackles use `crackles`; the other signs `amount`
    amount: float = 0.0  # share of cycles with an S3 / dropped, or the wheeze's extent


def choose_format(rng: np.random.Generator) -> dict:
    """The label-free way a recording is captured and stored."""
    container, subtype, extension = ENCODINGS[int(rng.choice(len(ENCODINGS), p=ENCODING_WEIGHTS))]
    if rng.random() < 0.1:
        extension = extension.upper()
    rate = int(rng.choice(SAMPLE_RATES, p=SAMPLE_RATE_WEIGHTS))
    return {
        "sample_rate": rate,
        "channels": 2 if rng.random() < 0.1 else 1,
        "container": container,
        "subtype": subtype,
        "extension": extension,
        "site": SITES[int(rng.integers(len(SITES)))],
    }


def lung_sound(rng: np.random.Generator, spec: RecordingSpec) -> np.ndarray:
    """(frames, channels) float32 in [-1, 1]."""
    rate = spec.sample_rate
    n = int(round(spec.seconds * rate))
    t = np.arange(n) / rate
    mono = (
        _breathing(rng, t, rate)
        + _heart(rng, t, rate, spec)
        + _crackles(rng, n, rate, spec.crackles)
    )
    if spec.sign == "wheeze" and spec.amount > 0:  # drawn after pneumonia's draws
        mono += _wheeze(rng, t, spec.amount)
    mono += rng.uniform(0.005, 0.02) * rng.standard_normal(n, dtype=np.float32)  # mic hiss
    if rng.random() < 0.2:  # mains hum
        mono += 0.05 * np.sin(2 * np.pi * float(rng.choice([50.0, 60.0])) * t)
    out = mono[:, None]
    if spec.channels == 2:  # a second microphone: other gain, own noise
        second = mono * rng.uniform(0.6, 1.0) + 0.02 * rng.standard_normal(n, dtype=np.float32)
        out = np.stack([mono, second], axis=1)
    peak = np.max(np.abs(out)) or 1.0
    return (out * (rng.uniform(0.1, 0.9) / peak)).astype(np.float32)


@cache
def _breath_band(rate: int) -> np.ndarray:
    """The 100-600 Hz band-pass of a sample rate (designed once per rate)."""
    nyquist = rate / 2
    band = [100 / nyquist, min(600, 0.9 * nyquist) / nyquist]
    return signal.butter(2, band, "bandpass", output="sos")


def _breathing(rng: np.random.Generator, t: np.ndarray, rate: int) -> np.ndarray:
    """Band-passed noise (100-600 Hz) swelling with each breath."""
    noise = signal.sosfilt(_breath_band(rate), rng.standard_normal(t.size, dtype=np.float32))
    noise /= np.std(noise) or 1.0
    period = 60.0 / rng.uniform(12, 24)
    phase = rng.uniform(0, period)
    swell = np.abs(np.sin(np.pi * (t + phase) / period))
    return 0.3 * noise * (0.3 + 0.7 * swell * np.sqrt(swell))


def _heart(rng: np.random.Generator, t: np.ndarray, rate: int, spec: RecordingSpec) -> np.ndarray:
    """S1 and S2 as damped low tones at a random heart rate; the sign may add an S3 to a share
    of the cycles or drop a share of the beats (which cycles: evenly spread, no draw)."""
    beat = 60.0 / rng.uniform(55, 115)
    sound = np.zeros_like(t)
    start = rng.uniform(0, beat)
    freq = rng.uniform(40, 70)
    tone = _damped(rate, freq=freq, decay=0.02, seconds=0.16)  # no end click
    third = _damped(rate, freq=0.6 * freq, decay=0.03, seconds=0.14)
    for k, onset in enumerate(np.arange(start, t[-1], beat)):
        if spec.sign == "dropped" and _chosen(k, spec.amount):
            continue
        for offset, gain in ((0.0, 1.0), (0.3, 0.7)):
            _add(sound, tone * gain * 0.8, int((onset + offset) * rate))
        if spec.sign == "s3" and _chosen(k, spec.amount):
            _add(sound, third * 0.75, int((onset + 0.44) * rate))
    return sound


def _chosen(k: int, share: float) -> bool:
    """Cycle k is one of `share` of them, spread evenly (Bresenham): every 4th at 0.25."""
    return int((k + 1) * share + 1e-9) > int(k * share + 1e-9)


# A state of the periodic signs (evidence.Levels) -> the share of cycles it marks.
S3_SHARE_PER_LEVEL = 0.25
DROPPED_SHARE_PER_LEVEL = 0.15


def sign_amount(sign: str, state: float) -> float:
    """RecordingSpec.amount of a channel's rendered state."""
    if sign == "s3":
        return S3_SHARE_PER_LEVEL * state
    if sign == "dropped":
        return DROPPED_SHARE_PER_LEVEL * state
    return float(state)


def _wheeze(rng: np.random.Generator, t: np.ndarray, extent: float) -> np.ndarray:
    """A continuous musical tone (fundamental and an octave, a slow vibrato) lasting a share of
    the recording that grows with the extent, louder too."""
    freq = rng.uniform(250, 650)
    share = min(0.25 + 0.2 * extent, 0.95)
    begin = rng.uniform(0.0, 1.0 - share) * t[-1]
    inside = (t >= begin) & (t < begin + share * t[-1])
    fade = np.clip(np.minimum(t - begin, begin + share * t[-1] - t) / 0.05, 0.0, 1.0)
    phase = 2 * np.pi * freq * t + 0.8 * np.sin(2 * np.pi * rng.uniform(2, 5) * t)
    tone = np.sin(phase) + 0.4 * np.sin(2 * phase)
    return (0.12 + 0.05 * min(extent, 3.0)) * tone * fade * inside


def _crackles(rng: np.random.Generator, n: int, rate: int, count: int) -> np.ndarray:
    """`count` short transients at random times: the evidence."""
    sound = np.zeros(n)
    for _ in range(count):
        click = _damped(rate, freq=rng.uniform(500, 1200), decay=0.003, seconds=0.015)
        at = int(rng.uniform(0.02, 0.98) * n)
        _add(sound, click * rng.uniform(1.2, 2.0) * rng.choice([-1.0, 1.0]), at)
    return sound


def _damped(rate: int, freq: float, decay: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.sin(2 * np.pi * freq * t) * np.exp(-t / decay)


def _add(sound: np.ndarray, piece: np.ndarray, at: int) -> None:
    end = min(at + piece.size, sound.size)
    if at < end:
        sound[at:end] += piece[: end - at]


def write_recording(root: Path, spec: RecordingSpec) -> Path:
    path = root / spec.path
    path.parent.mkdir(parents=True, exist_ok=True)
    data = lung_sound(np.random.default_rng(list(spec.sound_seed)), spec)
    sf.write(path, data, spec.sample_rate, subtype=spec.subtype, format=spec.container)
    if spec.container == "WAV" and spec.subtype == "FLOAT":
        _zero_peak_timestamp(path)
    return path


def _zero_peak_timestamp(path: Path) -> None:
    """libsndfile stamps the wall clock into a float WAV's PEAK chunk; 0 keeps bytes repeatable.

    The chunk is (version: u32, timestamp: u32, peaks...) after its 8-byte header.
    """
    with open(path, "r+b") as handle:
        header = handle.read(12)
        offset = 12
        while header[:4] == b"RIFF":
            handle.seek(offset)
            chunk = handle.read(8)
            if len(chunk) < 8:
                return
            size = int.from_bytes(chunk[4:], "little")
            if chunk[:4] == b"PEAK":
                handle.seek(offset + 12)
                handle.write(b"\0\0\0\0")
                return
            offset += 8 + size + (size & 1)


def manifest_row(spec: RecordingSpec) -> dict:
    return {
        "path": spec.path.removeprefix("audio/"),
        "subject_id": spec.subject_id,
        "recorded_at": spec.recorded_at,
        "hadm_id": spec.manifest_hadm_id,
        "site": spec.site,
    }

"""The latent model behind the synthetic landing zone, and its exact oracle.

Every admission has a label y (pneumonia or not). Each modality renders a few *channels*: a
channel's score is N(shift * y, 1), independent of every other channel given y. What ends up in a
file is a deterministic function of the score (a rounded lab value, a finding mentioned or negated
in a note, the extent of an opacity, a crackle count), so an observation pins the score to an
interval [lo, hi) (lo == hi: the score itself). P(observation | y) is then a difference of normal
CDFs and the oracle, P(y | all observations), is a sum of log-likelihood ratios: no sampling.
docs/synthetic.md derives it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr, ndtr

from clinfuse.models.modalities import MODALITIES

# y ~ Bernoulli(Phi(BASE + u)), u ~ N(0, PATIENT_SD^2) shared by a patient's admissions: labels
# cluster within patients (why splits must be by patient); marginally P(y=1) = PREVALENCE.
BASE = -0.67
PATIENT_SD = 0.8
PREVALENCE = float(ndtr(BASE / math.sqrt(1.0 + PATIENT_SD**2)))

# Each modality is absent from the prediction window of this share of admissions, at random.
MISSING = {"ehr": 0.10, "text": 0.15, "image": 0.18, "audio": 0.20}

# Shift for data charted after the window (late labs, images, recordings): the disease has
# progressed, so a pipeline that leaks them beats the oracle, which is how a leak shows.
LATE_SHIFT = 1.6


Interval = tuple[float, float]


# --- renderings: score -> what the file shows, and the interval of scores that show it --------


@dataclass(frozen=True)
class LabScale:
    """value = center * exp(spread * score) (log-normal labs) or center + spread * score."""

    center: float
    spread: float
    decimals: int
    log: bool


LAB_SCALES = {
    "wbc": LabScale(7.5, 0.35, 1, log=True),  # K/uL
    "crp": LabScale(12.0, 1.1, 1, log=True),  # mg/L
    "temperature": LabScale(37.2, 0.55, 1, log=False),  # deg C
}


def lab_reading(name: str, score: float) -> tuple[float, Interval]:
    """The rounded value charted and the scores that round to it."""
    return _scale_reading(LAB_SCALES[name], score)


def _scale_reading(scale: LabScale, score: float) -> tuple[float, Interval]:
    raw = (
        scale.center * math.exp(scale.spread * score)
        if scale.log
        else (scale.center + scale.spread * score)
    )
    value = round(raw, scale.decimals)
    half = 0.5 * 10.0**-scale.decimals
    return value, (_lab_score(scale, value - half), _lab_score(scale, value + half))


def _lab_score(scale: LabScale, value: float) -> float:
    if not scale.log:
        return (value - scale.center) / scale.spread
    if value <= 0:
        return -math.inf
    return math.log(value / scale.center) / scale.spread


# A finding is negated in the note below NEGATED_BELOW, mentioned above MENTIONED_ABOVE, and not
# written about in between.
NEGATED_BELOW = -0.3
MENTIONED_ABOVE = 1.0


def finding_state(score: float) -> tuple[int, Interval]:
    """-1 negated ("denies fever"), 0 not mentioned, +1 mentioned."""
    if score < NEGATED_BELOW:
        return -1, (-math.inf, NEGATED_BELOW)
    if score >= MENTIONED_ABOVE:
        return 1, (MENTIONED_ABOVE, math.inf)
    return 0, (NEGATED_BELOW, MENTIONED_ABOVE)


# No opacity below OPACITY_FROM; above it the opacity grows with the score (size and density).
OPACITY_FROM = 0.3


def opacity_extent(score: float) -> tuple[float, Interval]:
    if score < OPACITY_FROM:
        return 0.0, (-math.inf, OPACITY_FROM)
    return score - OPACITY_FROM, (score, score)


# Crackles per second = CRACKLE_RATE * exp(CRACKLE_GAIN * score); the count is rounded.
CRACKLE_RATE = 1.0
CRACKLE_GAIN = 0.7
CRACKLE_MAX_RATE = 12.0


def crackle_count(score: float, seconds: float) -> tuple[int, Interval]:
    rate = min(CRACKLE_RATE * math.exp(CRACKLE_GAIN * score), CRACKLE_MAX_RATE)
    count = int(round(rate * seconds))
    lo = -math.inf if count == 0 else _crackle_score(count - 0.5, seconds)
    capped = count >= int(round(CRACKLE_MAX_RATE * seconds))
    hi = math.inf if capped else _crackle_score(count + 0.5, seconds)
    return count, (lo, hi)


def _crackle_score(count: float, seconds: float) -> float:
    return math.log(count / (seconds * CRACKLE_RATE)) / CRACKLE_GAIN


# --- renderings a task can give a channel (tasks.py) -------------------------------------------
# Each maps (score, recording seconds, the channel's own label-free draw) to what the file shows
# and the scores that show it; None: the channel is not in the file (a test not ordered).


@dataclass(frozen=True)
class Lab:
    """A lab value monotone in the score (log-normal or linear): LabScale's reading."""

    scale: LabScale
    floor: float | None = None  # values below it are charted as it (0 is not a lab result)

    def observe(self, score: float, seconds: float, aux: float | None) -> tuple[float, Interval]:
        value, (lo, hi) = _scale_reading(self.scale, score)
        if self.floor is not None and value <= self.floor:
            return self.floor, (-math.inf, _lab_score(self.scale, self.floor + _half(self.scale)))
        return value, (lo, hi)


@dataclass(frozen=True)
class Trend:
    """Two readings of one item in the window: the first is drawn on the charted grid without
    looking at y (`draw`), the later one is first + step * score rounded, so the two charted values
    pin the score to an interval whatever the first was."""

    scale: LabScale  # the first reading's label-free distribution (and decimals)
    step: float
    floor: float  # the later reading never goes below it

    def draw(self, rng: np.random.Generator) -> float:
        raw = self.scale.center * math.exp(float(rng.normal(0.0, self.scale.spread)))
        return max(round(raw, self.scale.decimals), self.floor)

    def observe(self, score: float, seconds: float, aux: float | None) -> tuple[float, Interval]:
        first, half = float(aux), _half(self.scale)
        value = round(first + self.step * score, self.scale.decimals)
        hi = (value + half - first) / self.step
        if value <= self.floor:
            return self.floor, (-math.inf, (self.floor + half - first) / self.step)
        return value, ((value - half - first) / self.step, hi)


@dataclass(frozen=True)
class Rare:
    """A test ordered for `share` of admissions, independently of y; strong when present."""

    lab: Lab
    share: float

    def draw(self, rng: np.random.Generator) -> float:
        return float(rng.random() < self.share)

    def observe(
        self, score: float, seconds: float, aux: float | None
    ) -> tuple[float, Interval] | None:
        return self.lab.observe(score, seconds, None) if aux else None


@dataclass(frozen=True)
class Levels:
    """A discrete state: offset + how many cuts lie at or below the score (a finding's
    negated/silent/mentioned, a count of findings, a share of heart cycles)."""

    cuts: tuple[float, ...]
    offset: int = 0

    def observe(self, score: float, seconds: float, aux: float | None) -> tuple[int, Interval]:
        k = sum(1 for cut in self.cuts if score >= cut)
        edges = (-math.inf, *self.cuts, math.inf)
        return self.offset + k, (edges[k], edges[k + 1])


@dataclass(frozen=True)
class Extent:
    """Nothing below `start`; above it the sign grows with score - start (an opacity, a
    reticular texture, a wheeze). start -inf: always shown, the score itself (a heart's width)."""

    start: float = -math.inf

    def observe(self, score: float, seconds: float, aux: float | None) -> tuple[float, Interval]:
        if math.isinf(self.start):
            return score, (score, score)
        if score < self.start:
            return 0.0, (-math.inf, self.start)
        return score - self.start, (score, score)


@dataclass(frozen=True)
class Crackles:
    """round(seconds * rate(score)) transients: crackle_count."""

    def observe(self, score: float, seconds: float, aux: float | None) -> tuple[int, Interval]:
        return crackle_count(score, seconds)


Rendering = Lab | Trend | Rare | Levels | Extent | Crackles


def _half(scale: LabScale) -> float:
    return 0.5 * 10.0**-scale.decimals


@dataclass(frozen=True)
class Channel:
    """One piece of evidence. Its score is N(0, 1) when y = 0 and N(shift, sd^2) when y = 1:
    a mean shift (sd 1) or, with sd > 1 and shift 0, a U shape (both tails mean disease)."""

    name: str
    modality: str
    shift: float
    render: Rendering
    sd: float = 1.0

    @property
    def informative(self) -> bool:
        return self.shift != 0.0 or self.sd != 1.0

    def draw(self, rng: np.random.Generator, label: int) -> float:
        if self.sd == 1.0:  # the draw pneumonia always made: its bytes stay the same
            return float(rng.normal(self.shift * label, 1.0))
        return float(rng.normal(self.shift * label, self.sd if label else 1.0))

    def late(self, z: float, label: int, flip: bool) -> float:
        """A score charted after the window from z ~ N(LATE_SHIFT * y, 1): further along for a
        positive (both tails for a U shape); no signal stays no signal."""
        if not self.informative:
            return z - LATE_SHIFT * label
        if self.sd != 1.0:
            return -z if flip else z
        return z


# Pneumonia's channels. Shifts tuned so that the oracle AUROC is ~0.92 with every modality,
# 0.73-0.78 with one (benchmarks/generate.py measures it).
CHANNELS = (
    Channel("wbc", "ehr", 0.70, Lab(LAB_SCALES["wbc"])),
    Channel("crp", "ehr", 0.65, Lab(LAB_SCALES["crp"])),
    Channel("temperature", "ehr", 0.60, Lab(LAB_SCALES["temperature"])),
    *(
        Channel(name, "text", 0.55, Levels((NEGATED_BELOW, MENTIONED_ABOVE), offset=-1))
        for name in ("cough", "fever", "pleuritic", "dyspnea", "chills", "hypoxia")
    ),
    Channel("opacity", "image", 1.10, Extent(OPACITY_FROM)),
    Channel("crackles", "audio", 1.00, Crackles()),
)
BY_NAME = {c.name: c for c in CHANNELS}


# --- the oracle ---------------------------------------------------------------------------------


def _log_mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """log(Phi(hi) - Phi(lo)), computed in the tail where it is small so it does not underflow."""
    upper = lo > 0  # both in the upper tail: use the survival function, Phi(-x)
    a = np.where(upper, log_ndtr(-lo), log_ndtr(hi))
    b = np.where(upper, log_ndtr(-hi), log_ndtr(lo))
    with np.errstate(divide="ignore"):
        return a + np.log1p(-np.exp(np.minimum(b - a, -1e-300)))


def log_likelihood_ratio(
    shift: float, lo: np.ndarray, hi: np.ndarray, sd: float = 1.0
) -> np.ndarray:
    """log P(score in [lo, hi) | y=1) / P(... | y=0) with score | y=1 ~ N(shift, sd^2) and
    score | y=0 ~ N(0, 1); a point (lo == hi) uses the densities."""
    lo = np.asarray(lo, dtype=float)
    hi = np.asarray(hi, dtype=float)
    point = lo == hi
    safe_hi = np.where(point, lo + 1.0, hi)  # any interval; the point rows are replaced below
    if sd == 1.0:  # pneumonia's arithmetic, kept as it was so its truth keeps its bytes
        interval = _log_mass(lo - shift, safe_hi - shift) - _log_mass(lo, safe_hi)
        return np.where(point, shift * lo - 0.5 * shift**2, interval)
    with np.errstate(invalid="ignore"):  # -inf - shift stays -inf; nan only in point rows
        interval = _log_mass((lo - shift) / sd, (safe_hi - shift) / sd) - _log_mass(lo, safe_hi)
    density = -math.log(sd) - 0.5 * ((lo - shift) / sd) ** 2 + 0.5 * lo**2
    return np.where(point, density, interval)


def posterior(llr: np.ndarray) -> np.ndarray:
    """P(y=1) from the prior odds and the evidence's log-likelihood ratio."""
    logit = math.log(PREVALENCE / (1.0 - PREVALENCE)) + np.asarray(llr, dtype=float)
    return 1.0 / (1.0 + np.exp(-logit))


def oracle(
    intervals: list[dict[str, Interval]],
    present: list[dict[str, bool]],
    channels: tuple[Channel, ...] = CHANNELS,
) -> dict:
    """p_oracle (every modality present in the window) and p_oracle_<m> (that one alone), as
    arrays over admissions; intervals[i] holds admission i's observed channels.

    An absent modality contributes nothing: its absence is independent of y, so marginalising
    its scores leaves the likelihood ratio at 1. So does a channel not in the file (a test not
    ordered, at random) and a channel without signal (its ratio is 1 everywhere).
    """
    n = len(intervals)
    llr = {m: np.zeros(n) for m in MODALITIES}
    for channel in channels:
        if not channel.informative:
            continue
        lo = np.array([obs.get(channel.name, (np.nan, np.nan))[0] for obs in intervals])
        hi = np.array([obs.get(channel.name, (np.nan, np.nan))[1] for obs in intervals])
        seen = ~np.isnan(lo) & np.array([p[channel.modality] for p in present], dtype=bool)
        if seen.any():
            llr[channel.modality][seen] += log_likelihood_ratio(
                channel.shift, lo[seen], hi[seen], channel.sd
            )
    out = {"p_oracle": posterior(sum(llr.values()))}
    out.update({f"p_oracle_{m}": posterior(llr[m]) for m in MODALITIES})
    return out

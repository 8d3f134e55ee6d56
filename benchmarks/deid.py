"""What note de-identification costs: seconds per 1,000 notes against plain passes over the same.

    .venv/bin/python benchmarks/deid.py [--notes 2000] [--seed 0] [--workers 1]

Notes of MIMIC-IV-Note lengths (radiology reports ~1.5 KB, four in five; discharge summaries
~10 KB) are stitched from the generator's own note texts, and a third of them get identifiers
(a name after a title, a signature, a phone number, an MRN, an e-mail address, a date). Prints,
per 1,000 notes, the seconds and notes/s of `NoteDeidentifier` and of three baselines in the
same process (`str.lower`, the same regular expressions without Presidio, and the TF-IDF
tokenizer `CountVectorizer`), the ratios, the engine's build time and the peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import regex
from sklearn.feature_extraction.text import CountVectorizer

from clinfuse.synthetic import generate

LENGTHS = ((0.8, 1_500), (0.2, 10_000))  # (share, mean characters)
PLANTS = (
    "Seen with Dr. Alice Zyxwood.",
    "Call 617-555-0142 with questions.",
    "MRN 00123456.",
    "Contact zq.marker@example.org.",
    "Follow-up on 03/14/2181.",
    "- Alice Zyxwood",
)


def peak_rss_mib() -> float:
    """ru_maxrss is in KiB on Linux; pool workers count as children."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def source_texts(seed: int) -> list[str]:
    """The generator's note texts (H&P, radiology, discharge) of a small landing zone."""
    scratch = Path(tempfile.mkdtemp(prefix="clinfuse-deid-"))
    try:
        generate(scratch / "landing", admissions=200, seed=seed, image_size=32)
        files = sorted((scratch / "landing" / "note").glob("*.csv*"))
        return [t for f in files for t in pd.read_csv(f)["text"].dropna().astype(str)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def realistic_notes(count: int, seed: int) -> list[str]:
    """`count` notes of MIMIC-like lengths, a third with planted identifiers."""
    rng = np.random.default_rng(seed)
    pieces = source_texts(seed)
    shares = np.array([share for share, _ in LENGTHS])
    notes = []
    for _ in range(count):
        mean = LENGTHS[int(rng.choice(len(LENGTHS), p=shares))][1]
        target = int(rng.gamma(4.0, mean / 4.0))
        parts: list[str] = []
        while sum(map(len, parts)) < target:
            parts.append(pieces[int(rng.integers(len(pieces)))])
        if rng.random() < 1 / 3:
            parts.insert(int(rng.integers(len(parts) + 1)), " ".join(PLANTS))
        notes.append("\n\n".join(parts))
    return notes


def timed(run: Callable[[], object]) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def regex_only(notes: list[str]) -> Callable[[], None]:
    """The de-identifier's own expressions, each run over each note, without Presidio."""
    from presidio_analyzer.predefined_recognizers import DateRecognizer, EmailRecognizer

    from clinfuse.assets.ingest.ehr import deid

    flags = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE
    patterns = deid.ID_PATTERNS + deid.PHONE_PATTERNS + deid.MONTH_NAME_PATTERNS
    patterns += DateRecognizer.PATTERNS + EmailRecognizer.PATTERNS
    compiled = [regex.compile(p.regex, flags) for p in patterns] + list(deid.NAME_PATTERNS)

    def run() -> None:
        for note in notes:
            for pattern in compiled:
                for _ in pattern.finditer(note):
                    pass

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notes", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="NoteDeidentifier.series workers")
    args = parser.parse_args(argv)

    notes = realistic_notes(args.notes, args.seed)
    chars = sum(map(len, notes))
    print(f"notes            {len(notes)}, mean {chars / len(notes):,.0f} chars")
    rss_before = peak_rss_mib()
    started = time.perf_counter()
    from clinfuse.assets.ingest.ehr import deid

    deid.NoteDeidentifier()
    build = time.perf_counter() - started
    print(f"engine build     {build:.2f} s (import and build, once per process)")
    if args.workers > 1:
        deid.POOL_MIN_NOTES = 0  # the pool for any size, so its cost shows
    series = pd.Series(notes, dtype="string")
    result: list[deid.Deidentified] = []
    costs = {
        "deidentify": timed(
            lambda: result.append(deid.NoteDeidentifier().series(series, args.workers))
        ),
        "str.lower": timed(lambda: [n.lower() for n in notes]),
        "regex only": timed(regex_only(notes)),
        "CountVectorizer": timed(lambda: CountVectorizer(ngram_range=(1, 2)).fit_transform(notes)),
    }
    per_k = 1000 / len(notes)
    for name, seconds in costs.items():
        ratio = costs["deidentify"] / seconds
        print(
            f"{name:<16} {seconds * per_k:8.3f} s/1k notes  {len(notes) / seconds:10,.0f} notes/s"
            f"  {chars / seconds / 2**20:7.2f} MiB/s  deidentify is {ratio:,.1f}x"
        )
    print(f"replaced         {result[0].metadata()}")
    print(f"peak RSS         {peak_rss_mib():.0f} MiB ({rss_before:.0f} MiB before Presidio)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

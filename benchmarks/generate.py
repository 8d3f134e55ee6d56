"""How long `clinfuse generate` takes, how much memory it holds, and what its oracle achieves.

    .venv/bin/python benchmarks/generate.py [--admissions 2000] [--image-size 128] [--out DIR]

Prints wall time, peak RSS (this process and its children), the size of each modality's folder
and the oracle's AUROC with every modality and with each one alone.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from sklearn.metrics import roc_auc_score

from clinfuse.synthetic import generate, truth_dir


def peak_rss_mib() -> float:
    """ru_maxrss is in KiB on Linux; children count separately, so both are added."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 1024


def folder_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--messy", action="store_true")
    parser.add_argument("--out", help="keep the landing zone here (default: a temporary folder)")
    args = parser.parse_args(argv)

    scratch = None if args.out else Path(tempfile.mkdtemp(prefix="clinfuse-bench-"))
    out = Path(args.out) if args.out else scratch / "landing"
    try:
        started = time.perf_counter()
        summary = generate(out, args.admissions, args.seed, args.messy, args.image_size)
        wall = time.perf_counter() - started
        print(f"admissions     {args.admissions} ({summary['patients']} patients)")
        print(f"wall time      {wall:.1f} s")
        print(f"peak RSS       {peak_rss_mib():.0f} MiB")
        for modality in ("ehr", "note", "dicom", "audio"):
            size, count = folder_mib(out / modality), summary["inputs"][modality]
            print(f"{modality:<14} {size:.1f} MiB  {count}")
        truth = pd.read_parquet(truth_dir(out) / "admissions.parquet")
        for column in [c for c in truth if c.startswith("p_oracle")]:
            print(f"AUROC {column:<15} {roc_auc_score(truth['label'], truth[column]):.3f}")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

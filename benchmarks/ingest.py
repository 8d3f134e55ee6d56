"""Ingest speed and memory: the DICOM and audio stages against plain single-process loops.

Generates one landing zone with the project's generator (or takes --landing), then runs, in this
process and on the same files, benchmarks/ingest_dicom.py's and benchmarks/ingest_audio.py's
comparisons: files/s of the asset code (process pool) vs a plain loop (pydicom.dcmread +
pixel_array + resize; soundfile.read + the same log-mel), the ratio, and peak memory.

    python benchmarks/ingest.py --admissions 2000 [--landing DIR] [--workers W]
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ingest_audio import bench_audio  # noqa: E402
from ingest_dicom import bench_dicom  # noqa: E402

from clinfuse.assets.settings import AudioSettings  # noqa: E402
from clinfuse.synthetic import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--landing", type=Path)
    parser.add_argument("--admissions", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        landing = args.landing
        if landing is None:
            landing = Path(scratch) / "landing"
            generate(landing, admissions=args.admissions, seed=0, image_size=256, progress=True)
        results = {
            "dicom": bench_dicom(landing, args.image_size, workers=args.workers),
            "audio": bench_audio(landing, AudioSettings(), workers=args.workers),
        }
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()

"""Ingest speed and memory: the DICOM and audio stages against plain single-process loops.

Generates one landing zone with the project's generator (or takes --landing), then runs, in this
process and on the same files, benchmarks/ingest_dicom.py's and benchmarks/ingest_audio.py's
comparisons: files/s of the asset code (process pool) vs a plain loop (pydicom.dcmread +
pixel_array + resize; soundfile.read + the same log-mel), the ratio, the CPU seconds of each
(this process and its descendants: on a shared machine the ratio of CPU per file is the one that
does not depend on what else runs), and peak memory.

    python benchmarks/ingest.py --admissions 1000 [--pixels 256] [--landing DIR] [--workers W]
    python benchmarks/ingest.py --admissions 300 --pixels 1024 --recording-seconds 20 30
    python benchmarks/ingest.py --admissions 5000 --repeats 1      # peak memory at 5,000 films

The defaults (256 px films, the generator's 3-6 s recordings) are the small-file case, where the
pool's fixed costs per file weigh most. Real exports are larger (chest films 2000+ px, lung
sounds 20 s or more): --pixels sets the generated films' size and --recording-seconds LO HI
replaces the generator's recordings by benchmarks/ingest_audio.py's own (mixed formats, lengths
uniform in [LO, HI]) for that case.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from ingest_audio import bench_audio, synthesise  # noqa: E402
from ingest_dicom import bench_dicom  # noqa: E402

from clinfuse.assets.settings import AudioSettings  # noqa: E402
from clinfuse.synthetic import generate  # noqa: E402


def main() -> None:
    args = _arguments()
    with tempfile.TemporaryDirectory() as scratch:
        landing = args.landing
        if landing is None:
            landing = Path(scratch) / "landing"
            generate(landing, admissions=args.admissions, seed=0, image_size=args.pixels)
        audio_landing = landing
        if args.recording_seconds is not None:
            audio_landing = Path(scratch) / "long_recordings"
            recordings = _recording_count(landing) or args.admissions
            synthesise(audio_landing, recordings, seconds=tuple(args.recording_seconds))
        results = {
            "dicom": bench_dicom(landing, args.image_size, args.workers, args.repeats),
            "audio": bench_audio(audio_landing, AudioSettings(), args.workers, args.repeats),
        }
    print(json.dumps(results, indent=2, default=str))
    print(_summary(results))


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--landing", type=Path, help="an existing landing zone")
    parser.add_argument("--admissions", type=int, default=1000, help="for a generated one")
    parser.add_argument("--pixels", type=int, default=256, help="rows/columns of generated films")
    parser.add_argument("--image-size", type=int, default=64, help="the ingested image size")
    parser.add_argument(
        "--recording-seconds", type=float, nargs=2, metavar=("LO", "HI"), default=None
    )
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    return parser.parse_args()


def _recording_count(landing: Path) -> int:
    manifest = landing / "audio" / "manifest.csv"
    return max(len(manifest.read_text().splitlines()) - 1, 0) if manifest.is_file() else 0


def _summary(results: dict) -> str:
    dicom, audio = results["dicom"], results["audio"]
    plain_cpu, ingest_cpu = min(dicom["plain"]["cpu_seconds"]), min(dicom["ingest"]["cpu_seconds"])
    lines = [
        f"load average {os.getloadavg()[0]:.1f} (2-core machine: wall ratios depend on it)",
        f"DICOM {dicom['files']} files: plain {dicom['plain']['files_per_s']} files/s, "
        f"ingest_dicom {dicom['ingest']['files_per_s']} files/s, x{dicom['speedup']}; CPU "
        f"{1000 * plain_cpu / dicom['files']:.2f} vs {1000 * ingest_cpu / dicom['files']:.2f} "
        f"ms/file (x{dicom['speedup_if_cores_idle']} with idle cores); peak PSS "
        f"{dicom['ingest']['peak_pss_mb']:.0f} MB, RSS {dicom['ingest']['peak_rss_mb']:.0f} MB",
        f"audio {audio['files']} files: plain {audio['plain_files_per_s']:.1f} files/s, "
        f"ingest_audio {audio['ingest_files_per_s']:.1f} files/s, "
        f"x{audio['speedup_vs_plain']:.2f}; CPU {audio['plain_cpu_ms_per_file']:.2f} vs "
        f"{audio['ingest_cpu_ms_per_file']:.2f} ms/file "
        f"(x{audio['projected_speedup_idle_cores']:.2f} with idle cores); peak RSS "
        f"{audio['ingest_peak_tree_mib']:.0f} MiB (tree), {audio['ingest_peak_parent_mib']:.0f} "
        "MiB (parent)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

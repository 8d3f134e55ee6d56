"""Training throughput of the fusion model: samples/s and peak memory, CUDA (bf16) vs CPU.

Synthetic random tensors, resident on the device, every modality present: this measures the
model's training step (forward, backward, AdamW), not data loading. CPU runs first, so that
its peak RSS is not inflated by a CUDA context.

    python benchmarks/gpu_train.py                  # 224 px, batch 64, 50 CUDA / 3 CPU steps
    python benchmarks/gpu_train.py --cpu-steps 1 --size 64 --batch 8   # a quick smoke run

Several processes (`--processes N`): the same step under DistributedDataParallel, as training
runs it under torchrun (models/distributed.py), for 1, 2, 4, ... and N processes, each world
size in fresh processes (1: a plain process; more: torchrun). CUDA: one GPU per process, nccl;
without CUDA (or `--device cpu`): CPU processes on gloo, for a smoke check. `--batch` is the
global batch, split across the processes as training splits it (strong scaling); `--weak`
gives every process `--batch` rows instead. Prints samples/s per world size against the
1-process baseline of the same invocation, and each rank's peak memory.

    python benchmarks/gpu_train.py --processes 8                          # 8 GPUs
    python benchmarks/gpu_train.py --processes 2 --size 32 --batch 8 --cpu-steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from clinfuse.models import distributed
from clinfuse.models.fusion import STRATEGIES, FusionModel
from clinfuse.models.runtime import autocast, autocast_dtype


@dataclass
class Measurement:
    device: str
    precision: str
    steps: int
    batch: int
    seconds: float
    peak_mib: float
    memory_kind: str

    @property
    def samples_per_second(self) -> float:
        return self.steps * self.batch / self.seconds


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50, help="timed CUDA steps")
    parser.add_argument("--cpu-steps", type=int, default=3, help="timed CPU steps (0: skip)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (CPU: 1)")
    parser.add_argument("--strategy", choices=STRATEGIES, default="attention")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--ehr-dim", type=int, default=64)
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--n-mels", type=int, default=64)
    parser.add_argument("--frames", type=int, default=251)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    parser.add_argument("--no-amp", action="store_true", help="fp32 on CUDA too")
    parser.add_argument(
        "--processes", type=int, default=0, help="data-parallel processes to scale to (0: off)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="with --processes: auto is CUDA when available")  # fmt: skip
    parser.add_argument("--weak", action="store_true", help="--batch rows per process")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # one world size's run
    return parser.parse_args(argv)


def synthetic_batch(
    args: argparse.Namespace, device: torch.device, rows: int | None = None
) -> dict[str, torch.Tensor]:
    b = args.batch if rows is None else rows
    return {
        "ehr": torch.randn(b, args.ehr_dim, device=device),
        "text": torch.randn(b, args.text_dim, device=device),
        "image": torch.rand(b, 1, args.size, args.size, device=device),
        "audio": torch.randn(b, 1, args.n_mels, args.frames, device=device) * 20 - 40,
        "mask": torch.ones(b, 4, dtype=torch.bool, device=device),
        "label": (torch.rand(b, device=device) < 0.3).float(),
    }


def build(args: argparse.Namespace, device: torch.device) -> FusionModel:
    model = FusionModel(
        ehr_dim=args.ehr_dim,
        text_dim=args.text_dim,
        image_shape=(1, args.size, args.size),
        audio_shape=(1, args.n_mels, args.frames),
        width=args.width,
        strategy=args.strategy,
    )
    return model.to(device).train()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA allocated"
    # ru_maxrss is KiB on Linux: the whole process's peak, data and model included.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process RSS"


def measure(
    args: argparse.Namespace, device: torch.device, steps: int, warmup: int, rows: int | None = None
):
    """`steps` timed training steps of `rows` rows (default --batch); under a process group,
    data-parallel as training is (models/distributed.py), timed from a common start."""
    torch.manual_seed(0)
    dtype = None if args.no_amp else autocast_dtype(device, amp=True)
    model = build(args, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    criterion = nn.BCEWithLogitsLoss()
    batch = synthetic_batch(args, device, rows)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def forward_loss(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with autocast(device, dtype):
            logits = model(batch)
        return criterion(logits.float(), batch["label"])

    loss_of = distributed.data_parallel(model, forward_loss, device)  # forward_loss alone

    def step() -> None:
        loss = loss_of(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    synchronize(device)
    if distributed.active():
        dist.barrier()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak, kind = peak_memory(device)
    precision = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    return Measurement(str(device), precision, steps, len(batch["label"]), seconds, peak, kind)


def print_table(rows: list[Measurement]) -> None:
    header = ("device", "precision", "steps", "batch", "samples/s", "ms/step", "peak MiB", "memory")
    lines = [header] + [
        (
            r.device,
            r.precision,
            str(r.steps),
            str(r.batch),
            f"{r.samples_per_second:.1f}",
            f"{1000 * r.seconds / r.steps:.1f}",
            f"{r.peak_mib:.0f}",
            r.memory_kind,
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for number, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if number == 0:
            print("  ".join("-" * w for w in widths))


def world_sizes(processes: int) -> list[int]:
    """1, 2, 4, ... below `processes`, and `processes` itself."""
    sizes, size = [], 1
    while size < processes:
        sizes.append(size)
        size *= 2
    return [*sizes, processes]


def scaling_device(args: argparse.Namespace) -> torch.device:
    if args.device == "cpu" or (args.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("--device cuda, but torch sees no CUDA device")
    return torch.device("cuda")


def worker(args: argparse.Namespace) -> None:
    """One world size: every rank measures, rank 0 writes all ranks' numbers to args.worker."""
    if args.threads:
        torch.set_num_threads(args.threads)
    with distributed.process_group(str(scaling_device(args))) as device:
        world = distributed.world_size()
        rows = args.batch if args.weak else distributed.local_batch(args.batch)
        cuda = device.type == "cuda"
        steps, warmup = (args.steps, args.warmup) if cuda else (args.cpu_steps, min(args.warmup, 1))
        mine = asdict(measure(args, device, steps, warmup, rows))
        mine["threads"] = torch.get_num_threads()
        ranks: list[dict | None] = [mine]
        if distributed.active():
            ranks = [None] * world
            dist.all_gather_object(ranks, mine)
        if distributed.is_main():
            report = {
                "processes": world,
                "backend": dist.get_backend() if distributed.active() else "none",
                "gpu": torch.cuda.get_device_name(device) if cuda else None,
                "ranks": ranks,
            }
            args.worker.write_text(json.dumps(report))


def launch(args: argparse.Namespace, world: int, folder: Path) -> dict:
    """Runs `worker` for one world size in fresh processes; its report."""
    result = folder / f"world-{world}.json"
    flags = []
    for name, value in vars(args).items():
        if name not in ("processes", "worker") and value is not False:
            flags += ["--" + name.replace("_", "-")] + ([] if value is True else [str(value)])
    script = [str(Path(__file__).resolve()), "--worker", str(result), *flags]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}"]
    command = [sys.executable, *(launcher if world > 1 else []), *script]
    env = dict(os.environ)
    if scaling_device(args).type == "cpu":
        # --threads, else the machine's cores shared out (torchrun would leave each process one)
        threads = args.threads or max(1, (os.cpu_count() or 1) // world)
        env["OMP_NUM_THREADS"] = str(threads)
    subprocess.run(command, env=env, check=True)
    return json.loads(result.read_text())


def print_scaling(reports: list[dict], weak: bool) -> None:
    base = None
    header = ("processes", "backend", "batch/rank", "global batch", "samples/s", "speedup",
              "efficiency", "ms/step", "peak MiB per rank", "threads")  # fmt: skip
    lines = [header]
    for report in reports:
        ranks = report["ranks"]
        seconds = max(r["seconds"] for r in ranks)  # a step ends when the slowest rank's does
        steps, rows = ranks[0]["steps"], ranks[0]["batch"]
        throughput = steps * rows * len(ranks) / seconds
        base = throughput if base is None else base
        lines.append(
            (
                str(report["processes"]),
                report["backend"],
                str(rows),
                str(rows * len(ranks)),
                f"{throughput:.1f}",
                f"{throughput / base:.2f}x",
                f"{throughput / base / report['processes']:.0%}",
                f"{1000 * seconds / steps:.1f}",
                " ".join(f"{r['peak_mib']:.0f}" for r in ranks),
                str(ranks[0]["threads"]),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    for number, line in enumerate(lines):
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)))
        if number == 0:
            print("  ".join("-" * w for w in widths))
    first = reports[0]["ranks"][0]
    scaling = "weak: --batch rows per process" if weak else "strong: --batch split across them"
    print(f"{first['precision']} on {first['device']}, {scaling}; memory: {first['memory_kind']}")


def scale(args: argparse.Namespace) -> None:
    device = scaling_device(args)
    if device.type == "cuda" and args.processes > torch.cuda.device_count():
        raise SystemExit(f"--processes {args.processes}: {torch.cuda.device_count()} GPU(s)")
    if device.type == "cpu" and args.cpu_steps <= 0:
        raise SystemExit("--processes on CPU times --cpu-steps steps: give at least 1")
    sizes = world_sizes(args.processes)
    if not args.weak:
        for world in sizes:
            distributed.local_batch(args.batch, world)  # every world size must split --batch
    print(
        f"{args.strategy} fusion, image {args.size}px, audio {args.n_mels}x{args.frames}, "
        f"{'batch per process' if args.weak else 'global batch'} {args.batch}, "
        f"width {args.width}, {device.type}, processes {sizes}"
    )
    with tempfile.TemporaryDirectory(prefix="gpu_train.") as folder:
        reports = [launch(args, world, Path(folder)) for world in sizes]
    if reports[0]["gpu"]:
        print(f"GPU: {reports[0]['gpu']}")
    print_scaling(reports, args.weak)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args)
        return
    if args.processes > 0:
        scale(args)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"{args.strategy} fusion, image {args.size}px, audio {args.n_mels}x{args.frames}, "
        f"batch {args.batch}, width {args.width}, CPU threads {torch.get_num_threads()}"
    )
    rows = []
    if args.cpu_steps > 0:
        rows.append(measure(args, torch.device("cpu"), args.cpu_steps, min(args.warmup, 1)))
    if torch.cuda.is_available():
        rows.append(measure(args, torch.device("cuda"), args.steps, args.warmup))
        print(f"GPU: {torch.cuda.get_device_name()}")
    else:
        print("no CUDA device: CPU numbers only")
    print_table(rows)
    if len(rows) == 2:
        ratio = rows[1].samples_per_second / rows[0].samples_per_second
        print(f"CUDA / CPU throughput: {ratio:.1f}x")


if __name__ == "__main__":
    main()

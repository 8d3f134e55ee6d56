"""Training throughput of the fusion model: samples/s and peak memory, CUDA (bf16) vs CPU.

Synthetic random tensors, resident on the device, every modality present: this measures the
model's training step (forward, backward, AdamW), not data loading. CPU runs first, so that
its peak RSS is not inflated by a CUDA context.

    python benchmarks/gpu_train.py                  # 224 px, batch 64, 50 CUDA / 3 CPU steps
    python benchmarks/gpu_train.py --cpu-steps 1 --size 64 --batch 8   # a quick smoke run
"""

from __future__ import annotations

import argparse
import resource
import time
from dataclasses import dataclass

import torch
from torch import nn

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
    return parser.parse_args(argv)


def synthetic_batch(args: argparse.Namespace, device: torch.device) -> dict[str, torch.Tensor]:
    b = args.batch
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


def measure(args: argparse.Namespace, device: torch.device, steps: int, warmup: int):
    torch.manual_seed(0)
    dtype = None if args.no_amp else autocast_dtype(device, amp=True)
    model = build(args, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    criterion = nn.BCEWithLogitsLoss()
    batch = synthetic_batch(args, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step() -> None:
        with autocast(device, dtype):
            logits = model(batch)
        loss = criterion(logits.float(), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak, kind = peak_memory(device)
    precision = "fp32" if dtype is None else str(dtype).removeprefix("torch.")
    return Measurement(str(device), precision, steps, args.batch, seconds, peak, kind)


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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
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

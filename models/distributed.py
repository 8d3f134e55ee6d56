"""Several training processes: torchrun's process group and what the training loop asks of it.

`torchrun --nproc_per_node N` starts N copies of a script and gives each RANK, LOCAL_RANK,
WORLD_SIZE, MASTER_ADDR and MASTER_PORT; `process_group()` joins them (nccl on CUDA, one GPU per
local rank; gloo on CPU) and leaves on exit. Without those variables it does nothing, and every
helper below is the identity: the single-process training path never touches torch.distributed.

Under a group, training (models/training.py) is DistributedDataParallel: each rank reads its
share of every global batch (a DistributedSampler); gradients are averaged across ranks, and
BatchNorm's running statistics after every step, so the weights, their moving average and the
optimiser stay bit-identical on every rank; rank 0 validates and broadcasts the result, so all
ranks stop at the same epoch. Augmentation and dropout draw per rank (`rank_seed`).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from clinfuse.models.runtime import resolve_device

T = TypeVar("T")

LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# Per-rank random streams (augmentation, modality dropout, nn.Dropout) are seed + RANK_STRIDE *
# rank: rank 0 keeps the single-process seed, and no rank lands on a neighbouring run's seed
# (cross-fitting seeds its folds seed, seed + 1, ...).
RANK_STRIDE = 100_003
# DistributedDataParallel's per-forward broadcast of buffers is off (sync_buffers replaces it);
# torch 2.13 renamed the keyword that turns it off.
_DDP = nn.parallel.DistributedDataParallel
_NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(_DDP).parameters
    else {"broadcast_buffers": False}
)


def launched() -> bool:
    """Whether this process was started by torchrun (or anything that sets its variables)."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def active() -> bool:
    """Whether a process group is initialised: training then runs data-parallel over it."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0, or the only process: the one that writes outputs."""
    return rank() == 0


@contextlib.contextmanager
def process_group(device: str = "auto") -> Iterator[torch.device]:
    """Joins torchrun's group for the duration of the block; yields this rank's device.

    CUDA: backend nccl, device cuda:LOCAL_RANK (one GPU per process). CPU: gloo. Not launched
    by torchrun: no group, and the device is `device` resolved as usual.
    """
    target = resolve_device(device)
    if not launched():
        yield target
        return
    if target.type == "cuda":
        local = int(os.environ["LOCAL_RANK"])
        if local >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK {local} but {torch.cuda.device_count()} CUDA devices: start at "
                "most one process per GPU (torchrun --nproc_per_node)"
            )
        target = torch.device("cuda", local)
        torch.cuda.set_device(target)
    dist.init_process_group("nccl" if target.type == "cuda" else "gloo", init_method="env://")
    try:
        yield target
    finally:
        dist.destroy_process_group()


def local_batch(global_batch: int, world: int | None = None) -> int:
    """Rows per rank and step: the global batch split evenly (an uneven split is an error)."""
    world = world_size() if world is None else world
    if global_batch % world:
        raise ValueError(
            f"batch_size {global_batch} is the global batch and must be a multiple of the "
            f"{world} training processes"
        )
    return global_batch // world


def rank_seed(seed: int) -> int:
    """This rank's own seed for what should differ per rank; `seed` itself on rank 0."""
    return seed + RANK_STRIDE * rank()


def shard_sampler(dataset: Any, seed: int) -> DistributedSampler:
    """This rank's share of a shuffled epoch. The permutation depends on seed and epoch only;
    rank r takes its positions r, r + W, ..., so rank r's k-th batch of B / W rows and the other
    ranks' k-th batches together are rows [kB, (k + 1)B) of it: one global batch of B. An epoch
    whose length is not a multiple of W is padded with its first rows (DistributedSampler)."""
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), seed=seed)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Reshuffles a sharded loader for `epoch` (DistributedSampler needs it); else nothing."""
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)


class _Step(nn.Module):
    """`module`'s parameters with `step` as forward: DistributedDataParallel prepares its
    gradient reduction in forward, and finds the parameters a step leaves unused from forward's
    output, so forward must be the whole step, down to the loss."""

    def __init__(self, module: nn.Module, step: Callable[..., Any]):
        super().__init__()
        self.module = module
        self.step = step

    def forward(self, *args: Any) -> Any:
        return self.step(*args)


def data_parallel(
    module: nn.Module, step: Callable[..., T], device: torch.device
) -> Callable[..., T]:
    """`step` (a forward pass of `module` down to the loss) with gradients averaged across ranks.

    Without a group: `step` itself. Parameters a rank does not reach in a step (an encoder whose
    modality no admission of this rank's rows has) are allowed (`find_unused_parameters`).
    Buffers are the caller's to `sync_buffers` after each step. Build it before anything copies
    the weights: it gives every rank rank 0's weights, and the buffers are synced here once.
    """
    if not active():
        return step
    device_ids = None  # CPU: the module's own device
    if device.type == "cuda":
        device_ids = [torch.cuda.current_device() if device.index is None else device.index]
    parallel = _DDP(
        _Step(module, step),
        device_ids=device_ids,
        find_unused_parameters=True,
        **_NO_FORWARD_BUFFER_SYNC,
    )
    sync_buffers(module)
    return parallel


def sync_buffers(module: nn.Module) -> None:
    """Makes `module`'s buffers the same on every rank: floating-point ones (BatchNorm's running
    statistics) averaged over ranks, the others (counters) rank 0's. Nothing without a group.

    The CNN encoders' residual blocks hold BatchNorm (MONAI's ResNet), whose running statistics
    each rank updates from its own rows; averaged after every step, the weights that are
    validated, averaged (EMA) and kept stay identical across ranks.
    """
    if not active():
        return
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in module.buffers():
        groups.setdefault(buffer.dtype, []).append(buffer)
    for dtype, buffers in groups.items():
        flat = torch.cat([b.detach().reshape(-1) for b in buffers])
        if dtype.is_floating_point:
            dist.all_reduce(flat)
            flat /= dist.get_world_size()
        else:
            dist.broadcast(flat, src=0)
        offset = 0
        for buffer in buffers:
            buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
            offset += buffer.numel()


def _collective_device() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Each value summed over ranks (float64); the values themselves without a group."""
    if not active():
        return values
    total = torch.tensor(values, dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total)
    return tuple(float(v) for v in total.tolist())


def mean_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The mean over ranks of a tensor that carries no gradient; `tensor` without a group."""
    if not active():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def from_rank_zero(compute: Callable[[], T]) -> T:
    """`compute()` on rank 0 only, and its (picklable) result on every rank."""
    if not active():
        return compute()
    box = [compute() if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0, device=_collective_device())
    return cast(T, box[0])


def fingerprint(module: nn.Module) -> str:
    """sha256 of the state_dict's bytes: equal on two ranks only if every tensor is."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return digest.hexdigest()


def same_on_every_rank(module: nn.Module) -> bool:
    """Whether every rank holds bit-identical weights (always true without a group)."""
    if not active():
        return True
    prints: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(prints, fingerprint(module))
    return len(set(prints)) == 1

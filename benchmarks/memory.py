"""Peak memory of this process and everything it starts, sampled from /proc while work runs.

ru_maxrss gives one process's peak (and the largest child's), not the tree's at one moment;
the decode pools and torchrun workers are several processes at once. `TreeSampler` adds up the
resident set of this process and its descendants every `interval` seconds, and keeps the
samples, so a benchmark can also say which stage a peak fell in (from the stages' start and end
times). Linux only; shared pages count once per process, so the sum is an upper bound.

Two figures per sample: the resident set, and its private part (resident less the file-backed
and shared pages, statm's third field). Memory-mapped shards count in the first while they are
touched, but the kernel drops those clean pages whenever it needs the room; only the private
part is memory a stage holds. A stage whose private memory stays flat in N scales.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE")


def process_tree(root: int | None = None) -> list[int]:
    """`root` (default: this process) and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):  # gone meanwhile
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root or os.getpid()]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rss_kib(pid: int) -> int:
    """Resident set size of one process (0 once it is gone)."""
    return _statm_kib(pid)[0]


def private_kib(pid: int) -> int:
    """The resident pages of one process that no file backs and no other process shares."""
    resident, shared = _statm_kib(pid)
    return resident - shared


def _statm_kib(pid: int) -> tuple[int, int]:
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
        return int(fields[1]) * PAGE // 1024, int(fields[2]) * PAGE // 1024
    except (OSError, IndexError, ValueError):  # gone meanwhile
        return 0, 0


def tree_rss_mib(root: int | None = None) -> float:
    """Resident MiB of `root` (default: this process) and all its descendants, now."""
    return sum(rss_kib(pid) for pid in process_tree(root)) / 1024


def tree_memory_mib(root: int | None = None) -> tuple[float, float]:
    """(resident, private) MiB of `root` and all its descendants, now."""
    sizes = [_statm_kib(pid) for pid in process_tree(root)]
    return sum(r for r, _ in sizes) / 1024, sum(r - s for r, s in sizes) / 1024


class TreeSampler:
    """`with TreeSampler() as s:` ... then s.peak_mib, s.peak_between(t0, t1) (and private_)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []  # (time, resident, private)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.time(), *tree_memory_mib()))
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return max((rss for _, rss, _ in self.samples), default=0.0)

    @property
    def private_peak_mib(self) -> float:
        return max((private for *_, private in self.samples), default=0.0)

    def peak_between(self, start: float, end: float, private: bool = False) -> float:
        column = 2 if private else 1
        inside = [s[column] for s in self.samples if start <= s[0] <= end + self.interval]
        return max(inside, default=0.0)

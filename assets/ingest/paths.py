"""Confinement: nothing outside the landing zone is ever opened (landing-zone.md).

The zone is the landing folder and its four folders (ehr/, note/, dicom/, audio/) as the operator
set them up: each resolved once, so a folder that is itself a link (a mount, a demo data set
linked in as ehr/) is part of the zone. Every path below them is resolved, symbolic links
included, before it is opened; one that resolves outside every folder of the zone is quarantined
"outside landing zone" and never opened. A link whose target is inside the zone is read.

`walk_entries` lists a folder's files without following a linked folder, so a link out of the
zone is listed (and quarantined) but never walked, and a link loop cannot make it run forever.
The DICOM reader, the row counter and the delivery scan all list with it, so they agree on what
a file is. Plain code: no Dagster.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePath

ZONE_FOLDERS = ("ehr", "note", "dicom", "audio")


@dataclass(frozen=True)
class Zone:
    """The real (symlink-free) paths whose contents count as inside the landing zone."""

    roots: tuple[PurePath, ...]

    @classmethod
    def of(cls, landing: Path | str) -> Zone:
        root = Path(landing)
        folders = [root / name for name in ZONE_FOLDERS if (root / name).is_dir()]
        return cls(tuple(dict.fromkeys(_real(p) for p in [root, *folders])))

    def real(self, path: Path | str) -> Path | None:
        """The real path of `path` when it is inside the zone; None when it resolves outside."""
        real = _real(path)
        return Path(real) if any(real.is_relative_to(r) for r in self.roots) else None

    def contains(self, path: Path | str) -> bool:
        return self.real(path) is not None


def _real(path: Path | str) -> PurePath:
    # os.path.realpath, not Path.resolve: it never raises on a link loop (Python 3.11's resolve
    # raises RuntimeError), and a loop cannot be opened anyway.
    return PurePath(os.path.realpath(path))


def is_file_like(path: Path) -> bool:
    """A regular file or a symbolic link to anything: what the readers list as a file."""
    return path.is_symlink() or path.is_file()


def walk_entries(folder: Path) -> Iterator[Path]:
    """Every regular file and every symbolic link under `folder`, never entering a linked folder.

    `folder` itself may be a link. A sub-folder that cannot be listed is yielded as an entry of
    its own, so it is quarantined rather than lost without a trace. Order is unspecified.
    """
    stack = [str(folder)]
    while stack:
        top = stack.pop()
        try:
            with os.scandir(top) as found:
                entries = list(found)
        except OSError:
            if top != str(folder):
                yield Path(top)
            continue
        for entry in entries:
            if entry.is_symlink() or entry.is_file(follow_symlinks=False):
                yield Path(entry.path)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(entry.path)


def landing_entries(root: Path) -> Iterator[Path]:
    """walk_entries of the whole landing zone, entering its four folders even when linked."""
    for path in walk_entries(root):
        if path.parent == root and path.name in ZONE_FOLDERS and path.is_dir():
            yield from walk_entries(path)
        else:
            yield path


def read_regular(path: Path) -> bytes:
    """The bytes of a regular file; OSError for anything else (a folder, a FIFO, a device).

    Opened non-blocking and checked after opening: opening a FIFO for reading would otherwise
    wait forever for a writer, and checking before opening leaves a gap for a swap.
    """
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(descriptor, "rb") as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(f"not a regular file: {path}")
        return handle.read()

"""What the landing zone holds now, and which of its files have settled since the last look.

Plain code: the landing-zone sensor decides from it when to start a run, and the registry
fingerprints the landing zone a model was trained on.
"""

import os
from pathlib import Path

from clinfuse.assets.ingest.paths import Zone, landing_entries


def scan_landing(root: Path) -> dict[str, int]:
    """Relative path -> size of every file in the landing zone, links included.

    A link is followed only when it resolves to a file inside the zone; any other link (out of
    the zone, to a folder, broken) is listed with the size of the link itself, so nothing outside
    is ever looked at and a linked folder is never walked (paths.py).
    """
    root = Path(root)
    if not root.is_dir():
        return {}
    zone = Zone.of(root)
    sizes: dict[str, int] = {}
    for path in landing_entries(root):
        try:
            sizes[str(path.relative_to(root))] = _size(zone, path)
        except OSError:  # gone since it was listed (a copy tool renaming its temporary file)
            continue
    return sizes


def _size(zone: Zone, path: Path) -> int:
    if not path.is_symlink():
        return path.stat().st_size
    real = zone.real(path)
    if real is not None and real.is_file():
        return real.stat().st_size
    return os.lstat(path).st_size


def next_cursor(cursor: dict, current: dict[str, int]) -> tuple[list[str], dict]:
    """(files ready to ingest, the new cursor).

    A file is ready once it is new or changed and its size has not moved since the previous
    tick: a file still being copied is pending until then.
    """
    seen, pending = cursor.get("seen", {}), cursor.get("pending", {})
    changed = {p: s for p, s in current.items() if seen.get(p) != s}
    ready = sorted(p for p, s in changed.items() if pending.get(p) == s)
    still_pending = {p: s for p, s in changed.items() if p not in ready}
    new_seen = {**seen, **{p: current[p] for p in ready}}
    return ready, {"seen": new_seen, "pending": still_pending}

"""What the landing zone holds now, and which of its files have settled since the last look.

Plain code: the landing-zone sensor decides from it when to start a run, and the registry
fingerprints the landing zone a model was trained on.
"""

from pathlib import Path


def scan_landing(root: Path) -> dict[str, int]:
    """Relative path -> size of every file in the landing zone."""
    if not root.is_dir():
        return {}
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


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

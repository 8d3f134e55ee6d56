"""Static tools read the package: mypy (as pyright, jedi and editors would) resolves every
`clinfuse.*` import and every name imported from one, without running any import hook.

clinfuse/ holds committed links to the user's top-level folders (docs/architecture.md), so a
static resolver finds `clinfuse.assets.settings` at clinfuse/assets/settings.py. `make lint`
runs this file.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("assets", "models", "orchestration", "synthetic")
UNRESOLVED = re.compile(
    r'(module named "clinfuse[^"]*"|Module "clinfuse[^"]*" has no attribute|'
    r'"clinfuse[^"]*" is not a valid module)'
)


def _mypy(*targets: str, cache: Path) -> list[str]:
    command = [sys.executable, "-m", "mypy", "--follow-imports=skip", "--no-error-summary"]
    command += ["--cache-dir", str(cache), *targets]
    out = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert "error: " in out.stdout or out.returncode in (0, 1), out.stderr
    return [line for line in out.stdout.splitlines() if UNRESOLVED.search(line)]


def test_the_package_links_are_the_users_folders():
    for folder in FOLDERS:
        link = ROOT / "clinfuse" / folder
        assert link.is_symlink() and link.resolve() == (ROOT / folder).resolve()


def test_mypy_resolves_every_clinfuse_import(tmp_path):
    assert _mypy("-p", "clinfuse", cache=tmp_path / "cache") == []


def test_an_unresolvable_import_is_reported(tmp_path):
    """The check itself: a wrong module or name is caught."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from clinfuse.assets.settings import NoSuchName\nimport clinfuse.assets.no_such_module\n"
    )
    found = _mypy(str(probe), "clinfuse/assets/settings.py", cache=tmp_path / "cache")
    assert len(found) == 2, found

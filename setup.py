"""Maps the user's top-level folders onto the `clinfuse.*` import package.

pyproject.toml's package-dir says where each top-level folder goes; this lists every
sub-package below them so that a new folder with an __init__.py needs no extra line.
"""

from pathlib import Path

from setuptools import setup

ROOTS = {
    "clinfuse.orchestration": "orchestration",
    "clinfuse.assets": "assets",
    "clinfuse.models": "models",
    "clinfuse.synthetic": "synthetic",
}


def _packages() -> list[str]:
    found = []
    for package, folder in ROOTS.items():
        for init in sorted(Path(folder).rglob("__init__.py")):
            rel = init.parent.relative_to(folder).parts
            found.append(".".join((package, *rel)))
    return found


setup(packages=_packages())

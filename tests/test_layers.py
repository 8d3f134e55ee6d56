"""The import layers of docs/architecture.md, read from the source (ast), so they cannot drift.

    models <- plain code (assets/ without Dagster; synthetic/) <- asset definitions <- orchestration

- `models/` imports nothing of clinfuse but itself, and neither Dagster nor MLflow.
- Plain code under `assets/` and `synthetic/` imports only models and other plain code.
- Dagster helpers under `assets/` (resources, progress logging, check results: Dagster modules
  that define no asset) import plain code, models and other helpers.
- Asset definitions (modules that define assets, asset specs or checks) import plain code,
  helpers and models, never another module of definitions.
- Nothing imports `orchestration/` but orchestration itself: it is the only place that wires.
- Nobody imports another module's private name, nor the folders under their bare names
  (`import models`), and `MODALITIES` is defined once.

`make lint` runs this file.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("models", "assets", "synthetic", "orchestration")
DEFINING_CALLS = {"asset", "multi_asset", "asset_check", "multi_asset_check", "AssetSpec"}


@dataclass(frozen=True)
class Module:
    name: str  # clinfuse.assets.ingest.dicom.reader
    path: Path
    tree: ast.Module

    @property
    def folder(self) -> str:
        return self.name.split(".")[1]

    def imports(self) -> list[tuple[str, list[str], int]]:
        """(module, names imported from it, line) for every import statement."""
        found = []
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                found += [(alias.name, [], node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.append((node.module, [a.name for a in node.names], node.lineno))
        return found

    def uses(self, package: str) -> bool:
        return any(m == package or m.startswith(package + ".") for m, _, _ in self.imports())

    @property
    def defines_assets(self) -> bool:
        for node in ast.walk(self.tree):
            target = node.func if isinstance(node, ast.Call) else node
            if isinstance(target, ast.Attribute) and target.attr in DEFINING_CALLS:
                return True
        return False

    @property
    def layer(self) -> str:
        if self.folder in ("models", "orchestration"):
            return self.folder
        if not self.uses("dagster"):
            return "plain"
        return "definitions" if self.defines_assets else "helpers"


@cache
def modules() -> dict[str, Module]:
    found = {}
    for folder in FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join(("clinfuse", *parts))
            found[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    return found


def clinfuse_imports(module: Module) -> list[tuple[Module, list[str], int]]:
    """The clinfuse modules `module` imports (a `from package import submodule` counts as the
    submodule)."""
    known, out = modules(), []
    for target, names, line in module.imports():
        if not target.startswith("clinfuse."):
            continue
        for name in names or [""]:
            full = f"{target}.{name}" if name else target
            hit = known.get(full) or known.get(target)
            if hit is not None and hit.name != module.name:
                out.append((hit, [name] if name and full not in known else [], line))
    return out


ALLOWED = {
    "models": {"models"},
    "plain": {"models", "plain"},
    "helpers": {"models", "plain", "helpers"},
    "definitions": {"models", "plain", "helpers"},
    "orchestration": {"models", "plain", "helpers", "definitions", "orchestration"},
}


def _violations() -> list[str]:
    found = []
    for module in modules().values():
        layer = module.layer
        if layer == "models" and (module.uses("dagster") or module.uses("mlflow")):
            found.append(f"{module.name}: models imports Dagster or MLflow")
        for target, names, line in clinfuse_imports(module):
            where = f"{module.path.relative_to(ROOT)}:{line}"
            if target.layer not in ALLOWED[layer]:
                found.append(f"{where}: {layer} {module.name} imports {target.layer} {target.name}")
            private = [n for n in names if n.startswith("_")]
            if private:
                found.append(f"{where}: imports private {private} of {target.name}")
        for target, _, line in module.imports():
            if target.split(".")[0] in FOLDERS:
                found.append(f"{module.path.relative_to(ROOT)}:{line}: bare import {target}")
    return found


def test_the_layers_point_down():
    assert _violations() == []


def test_modalities_are_defined_once():
    defined = [
        module.name
        for module in modules().values()
        for node in module.tree.body
        if isinstance(node, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "MODALITIES" for t in node.targets)
    ]
    assert defined == ["clinfuse.models.modalities"]


@pytest.mark.parametrize(
    "name, layer",
    [
        ("clinfuse.models.learners", "models"),
        ("clinfuse.assets.ingest.dicom.reader", "plain"),
        ("clinfuse.assets.resources", "helpers"),
        ("clinfuse.assets.training.assets", "definitions"),
        ("clinfuse.orchestration.definitions", "orchestration"),
    ],
)
def test_modules_are_classified_as_documented(name, layer):
    """The check itself: a misclassification would let a violation through unseen."""
    assert modules()[name].layer == layer


def test_a_planted_violation_is_caught(monkeypatch):
    planted = ast.parse("from clinfuse.orchestration.resources import WorkDir\nimport dagster\n")
    fake = Module("clinfuse.models.planted", ROOT / "models" / "planted.py", planted)
    monkeypatch.setitem(modules(), fake.name, fake)
    assert any("models imports Dagster" in v for v in _violations())

"""MLflow model registry: register a version, and the champion / challenger promotion gate.

Aliases only: registry stages are deprecated in MLflow 3. Every new version gets the alias
`challenger`; `champion` moves to it only when the gate passes (or when forced). The decision and
the numbers behind it are written as tags on the challenger version so that the registry alone
tells why a version is, or is not, serving. See docs/promotion.md.
"""

from __future__ import annotations

import getpass
import math
import posixpath
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "promotion."
AUROC_TOLERANCE = 0.01
ECE_TOLERANCE = 0.02
# Comparisons at the tolerance boundary are inclusive; this absorbs float noise such as
# 0.8 - 0.01 != 0.79 so that "exactly at the tolerance" passes as documented.
EPSILON = 1e-9
READY_TIMEOUT_S = 300.0
_LOGGED_MODEL_URI = re.compile(r"^models:/(m-[0-9a-f]+)$")
_ALREADY_EXISTS = {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}
# Set on a version once its artifacts were found complete, so each is inspected only until then.
VERIFIED_TAG = "clinfuse.artifacts"
VERIFIED = "verified"
MLMODEL = "MLmodel"


# --- registering -----------------------------------------------------------------------------


def _ensure_registered_model(client: MlflowClient, model_name: str) -> None:
    try:
        client.create_registered_model(model_name)
    except MlflowException as error:
        if error.error_code not in _ALREADY_EXISTS:
            raise


def _model_source(client: MlflowClient, run_id: str, uri_or_path: str) -> tuple[str, str | None]:
    """(source, logged model id) for a version.

    MLflow 3 logs models as LoggedModels (`models:/m-<id>`), not as run artifacts; a bare name
    or `runs:/<run>/<name>` is looked up among the run's logged models by name, and only when
    none matches is it taken as a plain artifact directory of the run.
    """
    if match := _LOGGED_MODEL_URI.match(uri_or_path):
        return uri_or_path, match.group(1)
    if uri_or_path.startswith("models:/"):
        raise ValueError(f"{uri_or_path} is a registry URI; register a run's model instead")
    path = uri_or_path.removeprefix(f"runs:/{run_id}/").strip("/")
    run = client.get_run(run_id)
    outputs = run.outputs.model_outputs if run.outputs else []
    for output in sorted(outputs, key=lambda o: o.step, reverse=True):
        if client.get_logged_model(output.model_id).name == path:
            return f"models:/{output.model_id}", output.model_id
    return f"{run.info.artifact_uri.rstrip('/')}/{path}", None


def _wait_until_ready(client: MlflowClient, version: ModelVersion, timeout_s: float) -> None:
    """Block until READY; a remote registry may copy artifacts asynchronously."""
    deadline = time.monotonic() + timeout_s
    while True:
        current = client.get_model_version(version.name, version.version)
        if current.status == "READY":
            return
        if current.status == "FAILED_REGISTRATION" or time.monotonic() > deadline:
            raise RuntimeError(
                f"{version.name} v{version.version} is {current.status}: "
                f"{current.status_message or 'no message'}"
            )
        time.sleep(1.0)


def register_version(
    client: MlflowClient,
    model_name: str,
    run_id: str,
    artifact_path_or_model_uri: str,
    tags: dict[str, str],
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> ModelVersion:
    """A new READY version of `model_name` (created if missing), tagged, alias `challenger`.

    artifact_path_or_model_uri: `models:/m-<id>` (what `log_model` returns in MLflow 3), the
    logged model's name in the run, `runs:/<run_id>/<name>`, or an artifact directory of the run.
    The version is created only once its artifacts are found whole (RuntimeError otherwise), and
    earlier versions whose artifacts are missing are dropped first (`drop_broken_versions`).
    """
    _ensure_registered_model(client, model_name)
    source, model_id = _model_source(client, run_id, artifact_path_or_model_uri)
    problem = _source_problem(client, source, model_id)
    if problem is not None:  # never a version without its artifacts
        raise RuntimeError(f"{artifact_path_or_model_uri} cannot be registered: {problem}")
    drop_broken_versions(client, model_name)
    created = client.create_model_version(
        model_name,
        source,
        run_id=run_id,
        tags={k: str(v) for k, v in tags.items()},
        model_id=model_id,
        await_creation_for=int(ready_timeout_s),
    )
    _wait_until_ready(client, created, ready_timeout_s)
    client.set_registered_model_alias(model_name, CHALLENGER, created.version)
    client.set_model_version_tag(model_name, created.version, VERIFIED_TAG, VERIFIED)
    return client.get_model_version(model_name, created.version)


# --- versions whose artifacts are missing ----------------------------------------------------


def _source_problem(client: MlflowClient, source: str, model_id: str | None) -> str | None:
    """Why the artifacts at `source` are not whole, or None when they are.

    A logged model is whole once MLflow marked it READY (log_model does so after the upload)
    and its MLmodel file and every artifact its pyfunc flavour names are there. A plain
    artifact directory of a run (no logged model) must hold something, and an MLmodel in it
    must be whole too.
    """
    if model_id is not None:
        try:
            logged = client.get_logged_model(model_id)
        except MlflowException:
            return f"logged model {model_id} does not exist"
        if str(logged.status) != "READY":
            return f"logged model {model_id} is {logged.status} (its upload never finished)"
        source = logged.artifact_location
    return _missing_files(source.rstrip("/"), needs_mlmodel=model_id is not None)


def _listed(uri: str) -> set[str]:
    import mlflow

    return {posixpath.basename(e.path) for e in mlflow.artifacts.list_artifacts(artifact_uri=uri)}


def _missing_files(uri: str, needs_mlmodel: bool) -> str | None:
    import mlflow

    present = _listed(uri)
    if not present:
        return f"no artifacts under {uri}"
    if MLMODEL not in present:
        return f"no {MLMODEL} under {uri}" if needs_mlmodel else None
    try:
        model = yaml.safe_load(mlflow.artifacts.load_text(f"{uri}/{MLMODEL}")) or {}
    except Exception:  # noqa: BLE001 - unreadable or not YAML: the model is not whole
        return f"{MLMODEL} under {uri} cannot be read"
    flavor = (model.get("flavors") or {}).get("python_function") or {}
    for name, artifact in sorted((flavor.get("artifacts") or {}).items()):
        folder, file = posixpath.split(str(artifact.get("path", "")))
        if file not in _listed(f"{uri}/{folder}".rstrip("/")):
            return f"artifact {name} ({artifact.get('path')}) is missing under {uri}"
    return None


def version_problem(client: MlflowClient, version: ModelVersion) -> str | None:
    """Why a registered version cannot be loaded, or None."""
    if version.status != "READY":  # e.g. PENDING_REGISTRATION left by a killed copy
        return f"status {version.status}"
    uri = client.get_model_version_download_uri(version.name, version.version)
    return _source_problem(client, uri, getattr(version, "model_id", None))


def drop_broken_versions(client: MlflowClient, model_name: str) -> list[str]:
    """Deletes the versions of `model_name` whose artifacts are missing; returns their numbers.

    Such a version is what a run killed while a remote registry copied its model leaves behind
    (or a deleted artifact store); serving or re-scoring it could only fail. A version holding
    `champion` is never deleted (what serves is a person's call): it is tagged, and the gate's
    re-scoring of it fails loudly. Versions once found whole are not inspected again.
    """
    dropped = []
    # From the model, not the versions: search results do not carry their aliases.
    champion = client.get_registered_model(model_name).aliases.get(CHAMPION)
    for version in client.search_model_versions(f"name = '{model_name}'"):
        if version.tags.get(VERIFIED_TAG) == VERIFIED:
            continue
        problem = version_problem(client, version)
        if problem is None:
            client.set_model_version_tag(model_name, version.version, VERIFIED_TAG, VERIFIED)
        elif str(version.version) == str(champion):
            client.set_model_version_tag(model_name, version.version, VERIFIED_TAG, problem)
        else:
            client.delete_model_version(model_name, version.version)
            dropped.append(str(version.version))
    return dropped


def champion_version(client: MlflowClient, model_name: str) -> ModelVersion | None:
    """The version behind alias `champion`; None when the model or the alias does not exist."""
    try:
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    # Read from the model's alias map rather than get_model_version_by_alias: a missing alias
    # raises INVALID_PARAMETER_VALUE in the SQL store, which is too broad to catch safely.
    version = aliases.get(CHAMPION)
    return None if version is None else client.get_model_version(model_name, str(version))


# --- the gate --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What the gate says about two metric dicts; decide_promotion's pure result."""

    promote: bool
    reason: str
    numbers: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class PromotionDecision:
    """What promote() did. challenger / champion_before are version numbers as strings."""

    promoted: bool
    forced: bool
    challenger: str
    champion_before: str | None
    reason: str
    numbers: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _number(metrics: dict | None, key: str) -> float | None:
    value = None if metrics is None else metrics.get(key)
    if value is None or not math.isfinite(float(value)):
        return None
    return float(value)


def _gate_numbers(
    challenger: dict, champion: dict | None, auroc_tolerance: float, ece_tolerance: float
) -> dict[str, float | None]:
    return {
        "auroc_challenger": _number(challenger, "auroc"),
        "auroc_champion": _number(champion, "auroc"),
        "auroc_tolerance": auroc_tolerance,
        "ece_challenger": _number(challenger, "ece"),
        "ece_champion": _number(champion, "ece"),
        "ece_tolerance": ece_tolerance,
    }


def decide_promotion(
    challenger_metrics: dict,
    champion_metrics: dict | None,
    auroc_tolerance: float = AUROC_TOLERANCE,
    ece_tolerance: float = ECE_TOLERANCE,
) -> Verdict:
    """The gate, pure. Both dicts must come from the same test admissions (the caller's duty).

    No champion: promote. Otherwise promote when challenger AUROC >= champion AUROC - auroc_tol
    and challenger ECE <= champion ECE + ece_tol (both inclusive); refuse otherwise, or when a
    number the comparison needs is undefined.
    """
    n = _gate_numbers(challenger_metrics, champion_metrics, auroc_tolerance, ece_tolerance)
    if n["auroc_challenger"] is None or n["ece_challenger"] is None:
        return Verdict(False, "challenger AUROC or ECE is undefined (one class in test?)", n)
    if champion_metrics is None:
        return Verdict(True, "no champion yet", n)
    if n["auroc_champion"] is None or n["ece_champion"] is None:
        return Verdict(False, "champion AUROC or ECE is undefined: not comparable", n)
    auroc_floor = n["auroc_champion"] - auroc_tolerance
    ece_ceiling = n["ece_champion"] + ece_tolerance
    failures = []
    if n["auroc_challenger"] < auroc_floor - EPSILON:
        failures.append(
            f"AUROC {n['auroc_challenger']:.4f} < champion {n['auroc_champion']:.4f}"
            f" - {auroc_tolerance}"
        )
    if n["ece_challenger"] > ece_ceiling + EPSILON:
        failures.append(
            f"ECE {n['ece_challenger']:.4f} > champion {n['ece_champion']:.4f} + {ece_tolerance}"
        )
    if failures:
        return Verdict(False, "; ".join(failures), n)
    return Verdict(
        True,
        f"AUROC {n['auroc_challenger']:.4f} vs champion {n['auroc_champion']:.4f}, "
        f"ECE {n['ece_challenger']:.4f} vs {n['ece_champion']:.4f}: within tolerance",
        n,
    )


# --- applying it -----------------------------------------------------------------------------


def _who() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry, e.g. an arbitrary uid in a container
        return "unknown user"


def _tag_value(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _verdict_for(
    challenger_version: str,
    champion_before: str | None,
    challenger_metrics: dict,
    champion_metrics: dict | None,
    tolerances: dict[str, float],
) -> Verdict:
    """The gate, refusing when a champion exists but the caller gave no numbers for it."""
    if champion_before == challenger_version:
        verdict = decide_promotion(challenger_metrics, champion_metrics, **tolerances)
        return Verdict(True, "already the champion", verdict.numbers)
    if champion_before is not None and champion_metrics is None:
        verdict = decide_promotion(challenger_metrics, {}, **tolerances)
        return Verdict(
            False,
            f"champion v{champion_before} exists but no champion metrics were given",
            verdict.numbers,
        )
    return decide_promotion(challenger_metrics, champion_metrics, **tolerances)


def promote(
    client: MlflowClient,
    model_name: str,
    challenger_version: str,
    challenger_metrics: dict,
    champion_metrics: dict | None,
    force: bool = False,
    force_note: str = "",
    **tolerances: float,
) -> PromotionDecision:
    """Apply the gate to a registered version; move `champion` when it passes or when forced.

    `champion_metrics` must be the current champion's metrics on the same test admissions as
    `challenger_metrics`; with a champion in place and no numbers for it, the gate refuses.
    `force` overrides a refusal; it is recorded (promotion.forced=true, promotion.force_note:
    who and why, defaulting to the OS user). tolerances: auroc_tolerance, ece_tolerance.
    """
    challenger_version = str(challenger_version)
    current = champion_version(client, model_name)
    champion_before = None if current is None else str(current.version)
    verdict = _verdict_for(
        challenger_version, champion_before, challenger_metrics, champion_metrics, tolerances
    )
    forced = force and not verdict.promote
    promoted = verdict.promote or forced
    reason = verdict.reason
    if forced:
        reason = f"forced over refusal: {reason}"
    elif force:
        reason = f"{reason} (force given but not needed)"
    decision = PromotionDecision(
        promoted, forced, challenger_version, champion_before, reason, verdict.numbers
    )
    if promoted:
        _move_champion(client, model_name, challenger_version, champion_before)
    _record(client, model_name, decision, (force_note or _who()) if force else "")
    return decision


def _move_champion(
    client: MlflowClient, model_name: str, version: str, champion_before: str | None
) -> None:
    # `challenger` is left where register_version put it (the latest candidate), so the
    # promoted version keeps it too, and promoting an older version does not pull it back.
    client.set_registered_model_alias(model_name, CHAMPION, version)
    if champion_before is not None and champion_before != version:
        client.set_model_version_tag(
            model_name, champion_before, f"{TAG_PREFIX}superseded_by", version
        )


def _record(
    client: MlflowClient, model_name: str, decision: PromotionDecision, force_note: str
) -> None:
    tags = {
        "decision": "promoted" if decision.promoted else "refused",
        "reason": decision.reason,
        "forced": decision.forced,
        "champion_before": decision.champion_before,
        "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        **decision.numbers,
    }
    if force_note:
        tags["force_note"] = force_note
    for key, value in tags.items():
        client.set_model_version_tag(
            model_name, decision.challenger, f"{TAG_PREFIX}{key}", _tag_value(value)
        )

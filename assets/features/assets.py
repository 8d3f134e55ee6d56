"""Feature assets: transformers fitted on the train split only, applied to every admission."""

from pathlib import Path

import dagster as dg
import pandas as pd

from clinfuse.assets.cohort.window import allowed_notes, write_window_labs
from clinfuse.assets.features.labs import LabFeaturizer
from clinfuse.assets.features.text import NoteEmbedder
from clinfuse.assets.ingest.ehr.engine import EngineConfig
from clinfuse.assets.ingest.ingested import Ingested
from clinfuse.assets.ingest.quarantine import rejects_frame
from clinfuse.assets.resources import PipelineSettings, WorkDir
from clinfuse.models.modalities import MODALITIES

GROUP = "features"
OWNERS = ["team:clinical-ml"]


def _train(cohort: pd.DataFrame) -> pd.DataFrame:
    return cohort[cohort["split"] == "train"]


def _engine(workdir: WorkDir) -> EngineConfig:
    return EngineConfig.for_workdir(workdir.root, workdir.worker_count)


@dg.asset(group_name=GROUP, kinds={"duckdb", "parquet"}, owners=OWNERS)
def window_labs(
    settings: PipelineSettings, workdir: WorkDir, cohort: pd.DataFrame, labevents: Path
) -> Ingested:
    """Lab rows of cohort admissions charted inside their prediction window.

    Cut from labevents by DuckDB straight into Parquet (read_window_labs' rows, in its order):
    the featurizer, the features and their window check read this table instead of the whole
    (tens of GB at MIMIC scale) labevents again, and no step holds it in memory to write it.
    """
    staging = workdir.folder("tables") / "window_labs.staging.parquet"
    rows = write_window_labs(
        labevents, cohort, settings.value.window_hours, staging, _engine(workdir)
    )
    return Ingested(rows=staging, rejects=rejects_frame(), seen=rows)


@dg.asset(group_name=GROUP, kinds={"scikitlearn", "duckdb"}, owners=OWNERS)
def lab_featurizer(
    workdir: WorkDir, cohort: pd.DataFrame, window_labs: Path, patients: pd.DataFrame
) -> dict:
    """Which lab items to use and their robust scaling, fitted on train admissions only.

    Only train admissions' rows are read (nothing of the other splits is seen); DuckDB
    aggregates them per admission, so memory holds the train admissions' aggregates only.
    """
    train = _train(cohort)
    return LabFeaturizer().fit(window_labs, train, patients, engine=_engine(workdir)).to_dict()


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, owners=OWNERS)
def lab_features(
    context: dg.AssetExecutionContext,
    workdir: WorkDir,
    cohort: pd.DataFrame,
    window_labs: Path,
    patients: pd.DataFrame,
    lab_featurizer: dict,
) -> pd.DataFrame:
    """Per admission: window aggregates of each lab item, missing indicators, age and sex."""
    featurizer = LabFeaturizer.from_dict(lab_featurizer)
    table = featurizer.transform(window_labs, cohort, patients, engine=_engine(workdir))
    context.add_output_metadata({"features": len(featurizer.feature_names_)})
    return table.reset_index()


@dg.asset(group_name=GROUP, kinds={"scikitlearn"}, owners=OWNERS)
def note_embedder(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    cohort: pd.DataFrame,
    notes: Path,
) -> dict:
    """The text encoder: a packaged sentence encoder, else TF-IDF + SVD fitted on train.

    A TF-IDF term must be in the notes of `notes.min_term_patients` distinct train patients:
    what one patient's notes alone hold (a name the de-identifier missed) never persists.
    """
    run = settings.value
    text = allowed_notes(notes, cohort, run.window_hours)
    embedder = NoteEmbedder(
        backend=run.text_backend, seed=run.seed, min_term_patients=run.notes.min_term_patients
    )
    train = _train(cohort)
    embedder = embedder.fit(text, train["hadm_id"], train["subject_id"])
    terms = len(embedder.tfidf_.terms) if embedder.backend_ == "tfidf" else 0
    context.add_output_metadata(
        {
            "backend": embedder.backend_,
            "terms": terms,
            "min_term_patients": run.notes.min_term_patients,
        }
    )
    return embedder.to_state()


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, owners=OWNERS)
def note_features(
    context: dg.AssetExecutionContext,
    settings: PipelineSettings,
    cohort: pd.DataFrame,
    notes: Path,
    note_embedder: dict,
) -> pd.DataFrame:
    """Per admission: the embedding of its allowed notes (in the window, never "DS")."""
    text = allowed_notes(notes, cohort, settings.value.window_hours)
    embedder = NoteEmbedder.from_state(note_embedder)
    vectors = embedder.transform(text, cohort["hadm_id"])
    table = pd.DataFrame(vectors, columns=[f"text_{i}" for i in range(vectors.shape[1])])
    table.insert(0, "hadm_id", cohort["hadm_id"].to_numpy())
    context.add_output_metadata({"backend": embedder.backend_, "dim": int(vectors.shape[1])})
    return table


@dg.asset(group_name=GROUP, kinds={"pandas"}, owners=OWNERS)
def modality_availability(context: dg.AssetExecutionContext, cohort: pd.DataFrame) -> pd.DataFrame:
    """Admission x modality: which inputs each admission has inside its prediction window."""
    columns = [f"has_{m}" for m in MODALITIES]
    table = cohort[["hadm_id", "subject_id", "split", *columns]].copy()
    coverage = table.groupby("split")[columns].mean().round(3)
    context.add_output_metadata({"coverage_by_split": dg.MetadataValue.md(coverage.to_markdown())})
    return table

"""EHR and notes assets: the landing zone's tables, typed, linked and stored as Parquet.

Every table's materialization names how its files were read (landing-zone.md, "Files as
hospitals export them"): metadata `encodings` (file -> encoding) and `empty_files` (file ->
"no header" / "header only"), and the run log warns for each legacy encoding and empty file.
"""

import dagster as dg
import pandas as pd

from clinfuse.assets.ingest.ehr import notes as notes_reader
from clinfuse.assets.ingest.ehr import reader as ehr_reader
from clinfuse.assets.ingest.ehr.engine import EngineConfig
from clinfuse.assets.ingest.encodings import is_fallback
from clinfuse.assets.ingest.ingested import Ingested
from clinfuse.assets.resources import DECODE_POOL, LandingZone, WorkDir

GROUP = "ingest"
OWNERS = ["team:clinical-ml"]


def _ingested(read: ehr_reader.TableRead) -> Ingested:
    _describe_files(read)
    return Ingested(rows=read.rows, rejects=read.rejects, seen=read.seen)


def _describe_files(read: ehr_reader.TableRead) -> None:
    """The files' encodings and empty files, in the run log and the output's metadata.

    Through the current context rather than a `context` argument, so that every EHR asset,
    notes included, gets it from `_ingested` without a change to its signature.
    """
    context = dg.AssetExecutionContext.get()
    for file, encoding in read.encodings.items():
        if is_fallback(encoding):
            context.log.warning(f"{file}: not UTF-8, read as {encoding}")
    for file, kind in read.empty_files.items():
        context.log.warning(f"{file}: {kind}, 0 rows")
    for file, tokenizer in read.tokenizers.items():
        if tokenizer != ehr_reader.ENGINE:
            context.log.info(f"{file}: read by pandas (its layout is not one DuckDB takes as is)")
    metadata = {
        "encodings": dg.MetadataValue.json(read.encodings),
        "empty_files": dg.MetadataValue.json(read.empty_files),
    }
    if read.tokenizers:
        metadata["tokenizers"] = dg.MetadataValue.json(read.tokenizers)
    context.add_output_metadata(metadata)


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, owners=OWNERS, deps=["landing_ehr"])
def patients(landing: LandingZone) -> Ingested:
    """Patients (ehr/patients.csv[.gz]): one row per subject_id; later duplicates quarantined."""
    return _ingested(ehr_reader.read_patients(landing.root))


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, owners=OWNERS, deps=["landing_ehr"])
def admissions(landing: LandingZone, patients: pd.DataFrame) -> Ingested:
    """Admissions of known patients with parsed admit/discharge times."""
    return _ingested(ehr_reader.read_admissions(landing.root, patients))


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, owners=OWNERS, deps=["landing_ehr"])
def d_labitems(landing: LandingZone) -> Ingested:
    """The lab item dictionary: itemid -> label, fluid, category."""
    return _ingested(ehr_reader.read_d_labitems(landing.root))


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, owners=OWNERS, deps=["landing_ehr"])
def diagnoses_icd(
    landing: LandingZone, workdir: WorkDir, admissions: pd.DataFrame, patients: pd.DataFrame
) -> Ingested:
    """ICD-9/10 diagnoses per admission: the source of the label, never of a feature.

    Appended to Parquet chunk by chunk (MIMIC-IV's is ~4.8M rows); the cohort reads the codes
    it needs by path."""
    staging = workdir.folder("tables") / "diagnoses_icd.staging.parquet"
    read = ehr_reader.read_diagnoses(landing.root, admissions, patients, out=staging)
    _describe_files(read)
    return Ingested(rows=staging, rejects=read.rejects, seen=read.seen)


@dg.asset(
    group_name=GROUP, kinds={"duckdb", "pyarrow", "parquet"}, owners=OWNERS, deps=["landing_ehr"]
)
def labevents(
    landing: LandingZone, workdir: WorkDir, admissions: pd.DataFrame, patients: pd.DataFrame
) -> Ingested:
    """Lab results, streamed in chunks into Parquet; rows without hadm_id linked by charttime.

    Outpatient labs (in no admission) are kept with an empty hadm_id and used by no admission.
    DuckDB tokenizes the CSV (threads = the work directory's workers, spills under it).
    """
    staging = workdir.folder("tables") / "labevents.staging.parquet"
    engine = EngineConfig.for_workdir(workdir.root, workdir.worker_count)
    read = ehr_reader.stream_labevents(landing.root, staging, admissions, patients, engine=engine)
    _describe_files(read)
    return Ingested(rows=staging, rejects=read.rejects, seen=read.seen)


@dg.asset(
    group_name=GROUP,
    kinds={"pandas", "parquet"},
    owners=OWNERS,
    deps=["landing_note"],
    # De-identification runs in a process pool of every core on a large export, like decoding.
    pool=DECODE_POOL,
)
def notes(
    landing: LandingZone, workdir: WorkDir, admissions: pd.DataFrame, patients: pd.DataFrame
) -> Ingested:
    """Every note/ table, de-identified (docs/privacy.md) before anything of it is stored.
    Discharge summaries are kept here and excluded from features later.

    Read and de-identified chunk by chunk (100,000 notes, each chunk over the process pool),
    each chunk appended to the Parquet file as soon as it is clean: the raw text of one chunk is
    the only raw text in memory, and no step holds the table. Downstream assets take the file's
    path and read only the notes they may use (cohort/window.py's allowed_note_rows)."""
    # Imported here: Presidio takes ~1 s to import, which every process loading the code
    # location would pay.
    from clinfuse.assets.ingest.ehr.deid import Deidentified, NoteDeidentifier

    deidentifier = NoteDeidentifier()
    report = Deidentified(pd.Series([], dtype="string"))

    def deidentify(rows: pd.DataFrame) -> pd.DataFrame:
        clean = deidentifier.series(rows["text"], workers=workdir.worker_count)
        report.notes_changed += clean.notes_changed
        report.entities.update(clean.entities)
        return rows.assign(text=clean.texts)

    staging = workdir.folder("tables") / "notes.staging.parquet"
    read = notes_reader.read_notes(landing.root, admissions, patients, keep=deidentify, out=staging)
    dg.AssetExecutionContext.get().add_output_metadata(report.metadata())  # counts, never text
    _describe_files(read)
    return Ingested(rows=staging, rejects=read.rejects, seen=read.seen)

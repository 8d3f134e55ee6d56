"""EHR and notes assets: the landing zone's tables, typed, linked and stored as Parquet."""

import dagster as dg
import pandas as pd

from clinfuse.assets.ingest.ehr import notes as notes_reader
from clinfuse.assets.ingest.ehr import reader as ehr_reader
from clinfuse.assets.ingest.ingested import Ingested
from clinfuse.assets.resources import LandingZone, WorkDir

GROUP = "ingest"
OWNERS = ["team:clinical-ml"]


def _ingested(read: ehr_reader.TableRead) -> Ingested:
    return Ingested(rows=read.rows, rejects=read.rejects, seen=read.seen)


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
    landing: LandingZone, admissions: pd.DataFrame, patients: pd.DataFrame
) -> Ingested:
    """ICD-9/10 diagnoses per admission: the source of the label, never of a feature."""
    return _ingested(ehr_reader.read_diagnoses(landing.root, admissions, patients))


@dg.asset(group_name=GROUP, kinds={"pyarrow", "parquet"}, owners=OWNERS, deps=["landing_ehr"])
def labevents(
    landing: LandingZone, workdir: WorkDir, admissions: pd.DataFrame, patients: pd.DataFrame
) -> Ingested:
    """Lab results, streamed in chunks into Parquet; rows without hadm_id linked by charttime.

    Outpatient labs (in no admission) are kept with an empty hadm_id and used by no admission.
    """
    staging = workdir.folder("tables") / "labevents.staging.parquet"
    read = ehr_reader.stream_labevents(landing.root, staging, admissions, patients)
    return Ingested(rows=staging, rejects=read.rejects, seen=read.seen)


@dg.asset(group_name=GROUP, kinds={"pandas", "parquet"}, owners=OWNERS, deps=["landing_note"])
def notes(landing: LandingZone, admissions: pd.DataFrame, patients: pd.DataFrame) -> Ingested:
    """Every note/ table. Discharge summaries are kept here and excluded from features later."""
    return _ingested(notes_reader.read_notes(landing.root, admissions, patients))

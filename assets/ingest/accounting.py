"""The quarantine table and the input accounting: nothing is lost, everything has a reason."""

import dagster as dg
import pandas as pd

from clinfuse.assets.ingest.counting import landing_counts
from clinfuse.assets.ingest.quarantine import COLUMNS
from clinfuse.assets.resources import LandingZone

GROUP = "quality"
# (accounting key, modality, ingest asset) in report order
SOURCES = (
    ("ehr/patients", "ehr", "patients"),
    ("ehr/admissions", "ehr", "admissions"),
    ("ehr/labevents", "ehr", "labevents"),
    ("ehr/d_labitems", "ehr", "d_labitems"),
    ("ehr/diagnoses_icd", "ehr", "diagnoses_icd"),
    ("note", "note", "notes"),
    ("dicom", "dicom", "dicom_index"),
    ("audio", "audio", "recording_index"),
)


def _ins(part: str) -> dict[str, dg.AssetIn]:
    """Each ingest asset's `part` (its rejects or its counts, orchestration/io_manager.py) as an
    input named `<asset>_<part>`."""
    return {
        f"{asset}_{part}": dg.AssetIn(key=asset, metadata={"part": part}) for _, _, asset in SOURCES
    }


@dg.asset(group_name=GROUP, ins=_ins("rejects"), kinds={"pandas"}, owners=["team:clinical-ml"])
def quarantine(
    context: dg.AssetExecutionContext,
    patients_rejects: pd.DataFrame,
    admissions_rejects: pd.DataFrame,
    labevents_rejects: pd.DataFrame,
    d_labitems_rejects: pd.DataFrame,
    diagnoses_icd_rejects: pd.DataFrame,
    notes_rejects: pd.DataFrame,
    dicom_index_rejects: pd.DataFrame,
    recording_index_rejects: pd.DataFrame,
) -> pd.DataFrame:
    """Every rejected file or row of the landing zone: modality, source, reason in plain words."""
    rejects = (
        patients_rejects,
        admissions_rejects,
        labevents_rejects,
        d_labitems_rejects,
        diagnoses_icd_rejects,
        notes_rejects,
        dicom_index_rejects,
        recording_index_rejects,
    )
    frames = [frame for frame in rejects if len(frame)]
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)
    table = table[COLUMNS].astype("string")
    by_reason = table.groupby(["modality", "reason"]).size().rename("rows").reset_index()
    context.add_output_metadata(
        {
            "quarantined": len(table),
            "by_reason": dg.MetadataValue.md(by_reason.to_markdown(index=False))
            if len(by_reason)
            else "nothing quarantined",
        }
    )
    return table


@dg.asset(group_name=GROUP, ins=_ins("counts"), kinds={"pandas"}, owners=["team:clinical-ml"])
def input_accounting(
    context: dg.AssetExecutionContext,
    landing: LandingZone,
    patients_counts: dict,
    admissions_counts: dict,
    labevents_counts: dict,
    d_labitems_counts: dict,
    diagnoses_icd_counts: dict,
    notes_counts: dict,
    dicom_index_counts: dict,
    recording_index_counts: dict,
) -> pd.DataFrame:
    """Per table and modality: seen (counted from the files), ingested, quarantined, balanced."""
    counts = {
        "patients": patients_counts,
        "admissions": admissions_counts,
        "labevents": labevents_counts,
        "d_labitems": d_labitems_counts,
        "diagnoses_icd": diagnoses_icd_counts,
        "notes": notes_counts,
        "dicom_index": dicom_index_counts,
        "recording_index": recording_index_counts,
    }
    on_disk = landing_counts(landing.root)
    rows = []
    for key, modality, asset in SOURCES:
        reported = counts[asset]
        rows.append(
            {
                "source": key,
                "modality": modality,
                "seen": on_disk.get(key, 0),
                "reader_seen": reported["seen"],
                "ingested": reported["ingested"],
                "quarantined": reported["quarantined"],
                # DICOM and audio: files decoded since the index was last built (tables: NA)
                "decoded": reported.get("decoded"),
            }
        )
    table = pd.DataFrame(rows).astype({"decoded": "Int64"})
    table["balanced"] = (table["seen"] == table["ingested"] + table["quarantined"]) & (
        table["seen"] == table["reader_seen"]
    )
    context.add_output_metadata({"accounting": dg.MetadataValue.md(table.to_markdown(index=False))})
    return table


@dg.asset_check(asset=input_accounting, blocking=True)
def every_input_accounted_for(input_accounting: pd.DataFrame) -> dg.AssetCheckResult:
    """seen = ingested + quarantined for every table and modality."""
    off = input_accounting[~input_accounting["balanced"]]
    return dg.AssetCheckResult(
        passed=off.empty,
        metadata={"unbalanced": dg.MetadataValue.md(off.to_markdown(index=False))}
        if len(off)
        else {"unbalanced": "none"},
    )

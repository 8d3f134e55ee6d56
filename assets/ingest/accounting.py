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
    return {
        f"{asset}_{part}": dg.AssetIn(key=asset, metadata={"part": part}) for _, _, asset in SOURCES
    }


@dg.asset(group_name=GROUP, ins=_ins("rejects"), kinds={"pandas"}, owners=["team:clinical-ml"])
def quarantine(context: dg.AssetExecutionContext, **rejects: pd.DataFrame) -> pd.DataFrame:
    """Every rejected file or row of the landing zone: modality, source, reason in plain words."""
    frames = [frame for frame in rejects.values() if len(frame)]
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
    context: dg.AssetExecutionContext, landing: LandingZone, **counts: dict
) -> pd.DataFrame:
    """Per table and modality: seen (counted from the files), ingested, quarantined, balanced."""
    on_disk = landing_counts(landing.root)
    rows = []
    for key, modality, asset in SOURCES:
        reported = counts[f"{asset}_counts"]
        rows.append(
            {
                "source": key,
                "modality": modality,
                "seen": on_disk.get(key, 0),
                "reader_seen": reported["seen"],
                "ingested": reported["ingested"],
                "quarantined": reported["quarantined"],
            }
        )
    table = pd.DataFrame(rows)
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

"""The landing zone's folders as external assets: the sources at the left of the lineage.

clinfuse never writes them (a hospital's export does); they are declared so that the asset
graph starts where the data does, and the landing-zone sensor watches the same folders.
"""

import dagster as dg

GROUP = "landing"
OWNERS = ["team:clinical-ml"]


def _folder(name: str, description: str, kinds: set[str]) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=f"landing_{name}",
        group_name=GROUP,
        description=description,
        kinds=kinds,
        owners=OWNERS,
        metadata={"folder": f"{name}/"},
    )


landing_ehr = _folder("ehr", "ehr/: MIMIC-IV hosp tables (.csv or .csv.gz). Required.", {"csv"})
landing_note = _folder("note", "note/: MIMIC-IV-Note tables of any name. Optional.", {"csv"})
landing_dicom = _folder(
    "dicom", "dicom/: DICOM Part-10 files in any tree, optional manifest.csv.", {"dicom"}
)
landing_audio = _folder(
    "audio", "audio/: manifest.csv and WAV / FLAC recordings. Optional.", {"wav"}
)
LANDING_ASSETS = [landing_ehr, landing_note, landing_dicom, landing_audio]

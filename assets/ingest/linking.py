"""Which admission an event (a lab, an image, a recording) belongs to.

landing-zone.md: an event with a hadm_id belongs to that admission; one without belongs to the
admission of its patient whose [admittime, dischtime] holds its time.
"""

from __future__ import annotations

import pandas as pd

from clinfuse.assets.ingest.quarantine import NO_ADMISSION, UNKNOWN_ADMISSION, UNKNOWN_PATIENT


def link_to_admissions(
    events: pd.DataFrame,
    admissions: pd.DataFrame,
    known_subjects: pd.Series,
    time_column: str,
) -> pd.DataFrame:
    """Adds `linked_hadm_id` (Int64, NA when unlinked) and `link_problem` (string, NA when fine).

    events needs subject_id (Int64), hadm_id (Int64, may be NA) and `time_column` (datetime64);
    admissions needs subject_id, hadm_id, admittime, dischtime. link_problem is one of
    UNKNOWN_PATIENT, UNKNOWN_ADMISSION (a hadm_id that is not in admissions or belongs to another
    patient) or NO_ADMISSION (no hadm_id and no admission of the patient holds the time). Where
    admissions overlap, the latest admission that started before the time wins.
    """
    out = events.copy()
    out["linked_hadm_id"] = pd.array([pd.NA] * len(out), dtype="Int64")
    out["link_problem"] = pd.array([pd.NA] * len(out), dtype="string")
    if out.empty:
        return out

    known = out["subject_id"].isin(set(known_subjects.dropna().astype("int64")))
    out.loc[~known, "link_problem"] = UNKNOWN_PATIENT

    owner = admissions.set_index("hadm_id")["subject_id"]
    given = known & out["hadm_id"].notna()
    owner_of_given = out.loc[given, "hadm_id"].map(owner)
    matches = owner_of_given.eq(out.loc[given, "subject_id"]).fillna(False).astype(bool)
    out.loc[matches.index[matches], "linked_hadm_id"] = out.loc[matches.index[matches], "hadm_id"]
    out.loc[matches.index[~matches], "link_problem"] = UNKNOWN_ADMISSION

    by_time = known & out["hadm_id"].isna()
    timed = out.loc[by_time & out[time_column].notna(), ["subject_id", time_column]]
    if not timed.empty:
        found = _admission_holding(timed, admissions, time_column)
        out.loc[found.index, "linked_hadm_id"] = found
    unlinked = by_time & out["linked_hadm_id"].isna()
    out.loc[unlinked, "link_problem"] = NO_ADMISSION
    return out


def _admission_holding(
    timed: pd.DataFrame, admissions: pd.DataFrame, time_column: str
) -> pd.Series:
    """hadm_id whose [admittime, dischtime] holds each event's time (NA when none)."""
    left = timed.reset_index(names="_row").sort_values(time_column)
    left["subject_id"] = left["subject_id"].astype("int64")
    left[time_column] = left[time_column].astype("datetime64[ns]")
    right = admissions[["subject_id", "hadm_id", "admittime", "dischtime"]].dropna(
        subset=["admittime"]
    )
    right = right.assign(
        subject_id=right["subject_id"].astype("int64"),
        admittime=right["admittime"].astype("datetime64[ns]"),
        dischtime=right["dischtime"].astype("datetime64[ns]"),
    ).sort_values("admittime")
    merged = pd.merge_asof(
        left,
        right,
        left_on=time_column,
        right_on="admittime",
        by="subject_id",
        direction="backward",
    )
    inside = merged[time_column] <= merged["dischtime"]
    hadm = merged["hadm_id"].where(inside).astype("Int64")
    return pd.Series(hadm.to_numpy(), index=merged["_row"].to_numpy(), dtype="Int64")

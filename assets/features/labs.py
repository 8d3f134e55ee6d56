"""Lab features per admission: window aggregates of the commonest items, scaled on train only.

`LabFeaturizer` follows scikit-learn's contract (fit on the train split, transform every split)
and its fitted state is plain JSON (`to_dict` / `from_dict`), so the served model applies the very
transform the pipeline trained on. Input rows come from `window.read_window_labs` (a DataFrame)
or `window.write_window_labs` (a Parquet file): they are already cut to [admittime, admittime +
window).

Given a Parquet file, the item choice and the per-admission aggregates are computed by DuckDB
(engine.py) and only their result, one row per (admission, item), comes into memory: the same
items, order and ties ("last" by charttime, then file order); count, first, last, min and max
are the very values, the mean agrees to float rounding (compensated sums on both sides).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from clinfuse.assets.cohort.window import parquet_source
from clinfuse.assets.ingest.ehr.engine import EngineConfig, connect

# "first" with "last": a trend within the window (a rising creatinine) is their difference.
AGGREGATES = ("first", "last", "min", "max", "mean", "count")
# Scaled values are clipped: robust scaling leaves MIMIC's sentinel values (999999, typos in
# units) thousands of IQRs out, and one such value would dominate a network's first layer.
CLIP = 10.0
STATE_VERSION = 1


class LabFeaturizer:
    """Per item and admission: first/last/min/max/mean/count of numeric results, plus age and sex.

    fit chooses the `max_items` items present in the most train admissions' windows and fits a
    robust scaling ((x - median) / IQR) per column on train admissions only. transform returns a
    float32 table indexed by hadm_id in cohort order; an item absent from an admission's window
    gives 0 in its aggregates and 1 in `lab_<itemid>_missing`.
    """

    def __init__(self, max_items: int = 40, aggregates: tuple[str, ...] = AGGREGATES) -> None:
        unknown = set(aggregates) - set(AGGREGATES)
        if unknown:
            raise ValueError(f"unknown aggregates {sorted(unknown)}; known: {AGGREGATES}")
        self.max_items = int(max_items)
        self.aggregates = tuple(aggregates)

    # -- fitting -------------------------------------------------------------------------------

    def fit(
        self,
        window_labs: pd.DataFrame | Path,
        cohort_train: pd.DataFrame,
        patients: pd.DataFrame,
        d_labitems: pd.DataFrame | None = None,
        engine: EngineConfig | None = None,
    ) -> LabFeaturizer:
        """Learn items and scaling from the train admissions (rows of others are ignored).

        window_labs is a DataFrame, or the path of a Parquet file of window rows (aggregated
        by DuckDB, with `engine`'s threads and memory).
        """
        ids = cohort_train["hadm_id"]
        if isinstance(window_labs, pd.DataFrame):
            numeric = _numeric_labs(window_labs, ids)
            self.items_ = _most_frequent_items(numeric, self.max_items)
            stats = _stats(numeric, self.items_)
        else:
            with _EngineLabs(window_labs, ids, engine) as labs:
                self.items_ = labs.most_frequent_items(self.max_items)
                stats = labs.stats(self.items_)
        values, _ = _widen(stats, self.items_, self.aggregates, ids)
        self.center_, self.scale_ = _robust_scaling(values)
        (self.age_center_,), (self.age_scale_,) = _robust_scaling(
            _age(cohort_train, patients).to_frame()
        )
        self.item_labels_ = _item_labels(self.items_, d_labitems)
        self.feature_names_ = _feature_names(self.items_, self.aggregates)
        return self

    # -- applying ------------------------------------------------------------------------------

    def transform(
        self,
        window_labs: pd.DataFrame | Path,
        cohort: pd.DataFrame,
        patients: pd.DataFrame,
        engine: EngineConfig | None = None,
    ) -> pd.DataFrame:
        """The feature table: index hadm_id (cohort order), float32 columns feature_names_."""
        self._check_fitted()
        ids = cohort["hadm_id"]
        if isinstance(window_labs, pd.DataFrame):
            stats = _stats(_numeric_labs(window_labs, ids), self.items_)
        else:
            with _EngineLabs(window_labs, ids, engine) as labs:
                stats = labs.stats(self.items_)
        values, absent = _widen(stats, self.items_, self.aggregates, ids)
        raw = values.to_numpy(dtype=np.float64)
        scaled = (raw - np.asarray(self.center_)) / np.asarray(self.scale_)
        # NaN only where the item is absent, which the indicator says; 0 = the train median.
        labs = np.clip(np.nan_to_num(scaled, nan=0.0), -CLIP, CLIP)
        per_item = len(self.aggregates)
        lab_block = _interleave(labs, absent.astype(np.float64), per_item)
        table = np.hstack([lab_block, self._demographics(cohort, patients)]).astype(np.float32)
        index = pd.Index(_as_ids(ids), name="hadm_id")
        return pd.DataFrame(table, index=index, columns=self.feature_names_)

    def _demographics(self, cohort: pd.DataFrame, patients: pd.DataFrame) -> np.ndarray:
        age = _age(cohort, patients).to_numpy(dtype=np.float64)
        scaled = np.clip((age - self.age_center_) / self.age_scale_, -CLIP, CLIP)
        sex = _sex(cohort, patients)
        return np.column_stack(
            [np.nan_to_num(scaled, nan=0.0), np.isnan(age), sex == "F", sex == "M"]
        ).astype(np.float64)

    def _check_fitted(self) -> None:
        if not hasattr(self, "items_"):
            raise RuntimeError("LabFeaturizer is not fitted: call fit() or from_dict() first")

    # -- saving --------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The fitted state as JSON-able plain values."""
        self._check_fitted()
        return {
            "kind": "LabFeaturizer",
            "version": STATE_VERSION,
            "max_items": self.max_items,
            "aggregates": list(self.aggregates),
            "items": [int(i) for i in self.items_],
            "center": [float(v) for v in self.center_],
            "scale": [float(v) for v in self.scale_],
            "age_center": self.age_center_,
            "age_scale": self.age_scale_,
            "item_labels": {str(k): v for k, v in self.item_labels_.items()},
            "feature_names": list(self.feature_names_),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> LabFeaturizer:
        if state.get("kind") != "LabFeaturizer" or state.get("version") != STATE_VERSION:
            raise ValueError(f"not a LabFeaturizer state of version {STATE_VERSION}")
        out = cls(max_items=state["max_items"], aggregates=tuple(state["aggregates"]))
        out.items_ = [int(i) for i in state["items"]]
        out.center_ = [float(v) for v in state["center"]]
        out.scale_ = [float(v) for v in state["scale"]]
        out.age_center_ = float(state["age_center"])
        out.age_scale_ = float(state["age_scale"])
        out.item_labels_ = {int(k): v for k, v in state["item_labels"].items()}
        out.feature_names_ = list(state["feature_names"])
        return out


# -- helpers (module-level so that each is small and testable) ---------------------------------


def _as_ids(ids: pd.Series | pd.Index | np.ndarray) -> np.ndarray:
    return pd.Series(ids).astype("int64").to_numpy()


def _numeric_labs(window_labs: pd.DataFrame, ids: pd.Series) -> pd.DataFrame:
    """Rows of the given admissions with a numeric result (text results carry no number)."""
    keep = window_labs["valuenum"].notna() & window_labs["hadm_id"].isin(_as_ids(ids))
    rows = window_labs.loc[keep, ["hadm_id", "itemid", "charttime", "valuenum"]]
    return rows.astype({"hadm_id": "int64", "itemid": "int64", "valuenum": "float64"})


def _most_frequent_items(numeric: pd.DataFrame, max_items: int) -> list[int]:
    """Items measured in the most admissions (not rows: an hourly ICU item must not win just
    by being charted often in a few patients); ties go to the smaller itemid, for stability."""
    per_item = numeric.groupby("itemid")["hadm_id"].nunique().reset_index(name="n")
    ranked = per_item.sort_values(["n", "itemid"], ascending=[False, True], kind="stable")
    return [int(i) for i in ranked["itemid"].head(max_items)]


def _stats(numeric: pd.DataFrame, items: list[int]) -> pd.DataFrame:
    """Every AGGREGATES of each (hadm_id, itemid) with a numeric result, items of `items` only.

    "last" is the latest by charttime (ties keep file order: the sort is stable).
    """
    rows = numeric[numeric["itemid"].isin(items)].sort_values(
        ["hadm_id", "itemid", "charttime"], kind="stable"
    )
    return rows.groupby(["hadm_id", "itemid"])["valuenum"].agg(list(AGGREGATES))


def _widen(
    stats: pd.DataFrame, items: list[int], aggregates: tuple[str, ...], ids: pd.Series
) -> tuple[pd.DataFrame, np.ndarray]:
    """Unscaled values and the absent mask (ids x items) from the long `stats`.

    values: rows = ids in order, columns = (aggregate, item) item-major, NaN where the item has
    no numeric result in the window; count as log1p, counts being skewed.
    """
    stats = stats.copy()
    stats["count"] = np.log1p(stats["count"].astype("float64"))
    wide = stats.unstack("itemid").reindex(index=_as_ids(ids))
    levels = [None, "itemid"]  # named, so that an empty list of items still builds
    columns = pd.MultiIndex.from_tuples([(a, i) for i in items for a in aggregates], names=levels)
    values = wide.reindex(columns=columns).astype("float64")
    counts = pd.MultiIndex.from_tuples([("count", i) for i in items], names=levels)
    count = wide.reindex(columns=counts)
    return values, count.isna().to_numpy()


class _EngineLabs:
    """The numeric window rows of some admissions in a Parquet file, as DuckDB sees them.

    What _numeric_labs keeps (a result, an admission of `ids`), in file order (`filename`,
    `file_row_number`), which breaks charttime ties as the stable sort does in memory.
    """

    def __init__(self, path: Path | str, ids: pd.Series, engine: EngineConfig | None) -> None:
        self.con = connect(engine)
        wanted = pd.Series(_as_ids(ids)).drop_duplicates()
        self.con.register("wanted_ids", pa.table({"hadm_id": pa.array(wanted, pa.int64())}))
        self.rows = f"""
            SELECT hadm_id, itemid, charttime, valuenum, filename, file_row_number
            FROM {parquet_source(path, row_numbers=True)}
            WHERE valuenum IS NOT NULL AND NOT isnan(valuenum)
              AND hadm_id IN (SELECT hadm_id FROM wanted_ids)
        """

    def __enter__(self) -> _EngineLabs:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.con.close()

    def most_frequent_items(self, max_items: int) -> list[int]:
        """_most_frequent_items: by admissions measured, ties to the smaller itemid."""
        query = f"""
            SELECT itemid FROM ({self.rows})
            GROUP BY itemid ORDER BY count(DISTINCT hadm_id) DESC, itemid ASC
            LIMIT {int(max_items)}
        """
        return [int(i) for (i,) in self.con.execute(query).fetchall()]

    def stats(self, items: list[int]) -> pd.DataFrame:
        """_stats: AGGREGATES per (hadm_id, itemid), the very values pandas computes.

        DuckDB sorts the rows as _stats does (charttime ties in file order) and streams them;
        each (admission, item) is then reduced as pandas' groupby reduces it (GroupRunner), so
        only one batch of rows and the per-group results are ever in memory.
        """
        runner = GroupRunner()
        if items:
            self.con.register("wanted_items", pa.table({"itemid": pa.array(items, pa.int64())}))
            query = f"""
                SELECT hadm_id, itemid, valuenum FROM ({self.rows})
                WHERE itemid IN (SELECT itemid FROM wanted_items)
                ORDER BY hadm_id, itemid, charttime, filename, file_row_number
            """
            for batch in self.con.sql(query).to_arrow_reader(STREAM_ROWS):
                runner.add(batch)
        return runner.result()


STREAM_ROWS = 1_000_000  # rows of one batch streamed from the engine


class GroupRunner:
    """_stats over rows that arrive sorted as _stats sorts them, in batches of whole groups.

    Each batch, less its last (admission, item), which may go on in the next batch, is
    aggregated by pandas' own groupby: a group's aggregates depend only on its rows in their
    order, so the result is bit for bit _stats' (the mean's compensated sum included).
    """

    def __init__(self) -> None:
        self._tail: pd.DataFrame | None = None
        self._parts: list[pd.DataFrame] = []

    def add(self, batch: pa.RecordBatch) -> None:
        rows = pd.DataFrame(
            {
                "hadm_id": batch.column(0).to_numpy(zero_copy_only=False).astype(np.int64),
                "itemid": batch.column(1).to_numpy(zero_copy_only=False).astype(np.int64),
                "valuenum": batch.column(2).to_numpy(zero_copy_only=False).astype(np.float64),
            }
        )
        if self._tail is not None:
            rows = pd.concat([self._tail, rows], ignore_index=True)
            self._tail = None
        if rows.empty:
            return
        hadm, item = rows["hadm_id"].to_numpy(), rows["itemid"].to_numpy()
        last = int(_group_starts(hadm, item)[-1])  # the last group may go on in the next batch
        self._tail = rows.iloc[last:].reset_index(drop=True)
        if last:
            self._parts.append(_group_stats(rows.iloc[:last]))

    def result(self) -> pd.DataFrame:
        if self._tail is not None:
            self._parts.append(_group_stats(self._tail))
            self._tail = None
        if not self._parts:
            return _group_stats(pd.DataFrame({"hadm_id": [], "itemid": [], "valuenum": []}))
        return pd.concat(self._parts) if len(self._parts) > 1 else self._parts[0]


def _group_stats(rows: pd.DataFrame) -> pd.DataFrame:
    """_stats' groupby, on rows already in its order."""
    rows = rows.astype({"hadm_id": "int64", "itemid": "int64", "valuenum": "float64"})
    return rows.groupby(["hadm_id", "itemid"], sort=True)["valuenum"].agg(list(AGGREGATES))


def _group_starts(hadm: np.ndarray, item: np.ndarray) -> np.ndarray:
    """Offsets where a new (hadm_id, itemid) begins in rows sorted by both."""
    change = np.flatnonzero((hadm[1:] != hadm[:-1]) | (item[1:] != item[:-1])) + 1
    return np.concatenate([[0], change]).astype(np.int64)


def _robust_scaling(values: pd.DataFrame) -> tuple[list[float], list[float]]:
    """Median and IQR per column over the rows that have a value.

    A column whose IQR is 0 (a count that is always 1, a lab with one usual value) falls back to
    its standard deviation, then to 1, so that scaling never divides by zero.
    """
    centers, scales = [], []
    for column in values.columns:
        present = values[column].dropna().to_numpy(dtype=np.float64)
        if present.size == 0:
            centers.append(0.0)
            scales.append(1.0)
            continue
        q1, median, q3 = np.percentile(present, [25, 50, 75])
        scale = q3 - q1
        if not scale > 0:
            scale = float(present.std())
        centers.append(float(median))
        scales.append(float(scale) if scale > 0 else 1.0)
    return centers, scales


def _patient_rows(cohort: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    wanted = [c for c in ("subject_id", "gender", "anchor_age", "anchor_year") if c in patients]
    people = patients[wanted].drop_duplicates("subject_id").astype({"subject_id": "Int64"})
    left = pd.DataFrame(
        {
            "subject_id": cohort["subject_id"].astype("Int64").to_numpy(),
            "admittime": pd.to_datetime(cohort["admittime"]).to_numpy(),
        }
    )
    return left.merge(people, on="subject_id", how="left", validate="many_to_one")


def _age(cohort: pd.DataFrame, patients: pd.DataFrame) -> pd.Series:
    """Age at admission: MIMIC's anchor_age moved by the years since anchor_year (when known)."""
    rows = _patient_rows(cohort, patients)
    age = pd.to_numeric(rows["anchor_age"], errors="coerce").astype("float64")
    if "anchor_year" in rows:
        anchor_year = pd.to_numeric(rows["anchor_year"], errors="coerce").astype("float64")
        shift = rows["admittime"].dt.year.astype("float64") - anchor_year
        age = age + shift.fillna(0.0)
    return age.rename("age")


def _sex(cohort: pd.DataFrame, patients: pd.DataFrame) -> np.ndarray:
    """'F', 'M' or '' per cohort row; anything else (unknown, missing) is neither."""
    gender = _patient_rows(cohort, patients).get("gender")
    if gender is None:
        return np.full(len(cohort), "", dtype=object)
    return gender.astype("string").str.strip().str.upper().fillna("").to_numpy(dtype=object)


def _interleave(labs: np.ndarray, absent: np.ndarray, per_item: int) -> np.ndarray:
    """Columns item by item: that item's aggregates, then its missing indicator."""
    n_items = absent.shape[1]
    grouped = labs.reshape(len(labs), n_items, per_item)
    return np.concatenate([grouped, absent[:, :, None]], axis=2).reshape(len(labs), -1)


def _feature_names(items: list[int], aggregates: tuple[str, ...]) -> list[str]:
    names = []
    for item in items:
        names += [f"lab_{item}_{a}" for a in aggregates] + [f"lab_{item}_missing"]
    return names + ["age", "age_missing", "sex_female", "sex_male"]


def _item_labels(items: list[int], d_labitems: pd.DataFrame | None) -> dict[int, str]:
    """itemid -> 'label (fluid)', for reading the features; optional, never used to compute."""
    if d_labitems is None or d_labitems.empty:
        return {}
    table = d_labitems.drop_duplicates("itemid")
    table = table.set_index(table["itemid"].astype("int64"))
    labels = {}
    for item in items:
        if item in table.index:
            row = table.loc[item]
            fluid = row.get("fluid")
            text = str(row["label"])
            labels[item] = f"{text} ({fluid})" if isinstance(fluid, str) and fluid else text
    return labels

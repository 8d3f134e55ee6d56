"""Extra label-free lab rows, so that a landing zone can hold a MIMIC-sized labevents.

`clinfuse generate --labs-per-admission N` tops every admission up to about N lab rows with
filler results: label-free items of the task (never one of its signal items), charted anywhere
in the stay, 10% without hadm_id (linked by charttime, the expensive path of ingest), 3% without
a number ("___", a text result). They carry no label and no leak, so the truth and the oracle
are those of the same zone without them; the default (N = 0) writes no filler at all, and the
files are byte for byte what they always were.

The rows are drawn per admission from their own stream (streams.FILLER_LABS) and formatted as
whole columns with Arrow, then written as one block of CSV text: ~50M rows take minutes, not
the hours that one csv.writer call per row would.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from clinfuse.synthetic import streams, tables
from clinfuse.synthetic.population import AdmissionPlan
from clinfuse.synthetic.tasks import Task

NO_HADM_SHARE = 0.10  # MIMIC: about a quarter of labevents rows come without hadm_id
NO_NUMBER_SHARE = 0.03
PRIORITIES = ("STAT", "ROUTINE", "")


def filler_items(task: Task) -> list[tables.LabItem]:
    """The task's d_labitems that carry no label: none of its signal items."""
    signal = set(task.labs.values())
    return [item for item in tables.task_items(task) if item.itemid not in signal]


def filler_block(
    adm: AdmissionPlan,
    count: int,
    first_id: int,
    seed: int,
    items: list[tables.LabItem],
) -> str:
    """`count` labevents.csv rows (tables.LAB_COLUMNS, "\\n"-ended) of one admission."""
    if count <= 0 or not items:
        return ""
    rng = streams.render_rng(seed, adm.hadm_id, streams.FILLER_LABS)
    admit = np.datetime64(adm.admittime, "s")
    stay = int((adm.dischtime - adm.admittime).total_seconds() // 60)
    minutes = np.sort(rng.integers(0, max(stay, 1), size=count))
    charttime = admit + minutes.astype("timedelta64[m]")
    storetime = charttime + rng.integers(15, 180, size=count).astype("timedelta64[m]")
    pick = rng.integers(0, len(items), size=count)
    draw = rng.normal(0.0, 1.0, size=count)
    no_number = rng.random(count) < NO_NUMBER_SHARE
    no_hadm = rng.random(count) < NO_HADM_SHARE
    provider = rng.integers(10000, 99999, size=count)
    has_provider = rng.random(count) < 0.5
    priority = rng.integers(0, len(PRIORITIES), size=count)
    specimen = rng.integers(10_000_000, 99_999_999, size=count)

    value = np.empty(count, dtype=object)
    unit = np.empty(count, dtype=object)
    low = np.empty(count, dtype=object)
    high = np.empty(count, dtype=object)
    flag = np.full(count, "", dtype=object)
    for k, item in enumerate(items):
        rows = pick == k
        if not rows.any():
            continue
        raw = draw[rows] * item.spread
        raw = item.center * np.exp(raw) if item.log else item.center + raw
        raw = np.maximum(raw, 0.0)
        text = _fixed(raw, item.decimals)
        number = np.asarray(text, dtype=np.float64)
        value[rows] = text
        unit[rows] = item.unit
        low[rows] = "" if item.low is None else str(item.low)
        high[rows] = "" if item.high is None else str(item.high)
        out = np.zeros(len(raw), dtype=bool)
        if item.low is not None:
            out |= number < item.low
        if item.high is not None:
            out |= number > item.high
        flag[np.flatnonzero(rows)[out]] = "abnormal"
    value[no_number] = "___"
    flag[no_number] = ""
    itemid = np.array([item.itemid for item in items], dtype=np.int64)[pick]

    columns = {
        "labevent_id": _ints(np.arange(first_id, first_id + count)),
        "subject_id": pa.array(np.full(count, str(adm.subject_id), dtype=object)),
        "hadm_id": pa.array(np.where(no_hadm, "", str(adm.hadm_id)).astype(object)),
        "specimen_id": _ints(specimen),
        "itemid": _ints(itemid),
        "order_provider_id": pa.array(
            np.where(has_provider, np.char.add("P", provider.astype(str)), "").astype(object)
        ),
        "charttime": _times(charttime),
        "storetime": _times(storetime),
        "value": pa.array(value),
        "valuenum": pa.array(np.where(no_number, "", value).astype(object)),
        "valueuom": pa.array(unit),
        "ref_range_lower": pa.array(low),
        "ref_range_upper": pa.array(high),
        "flag": pa.array(flag),
        "priority": pa.array(np.asarray(PRIORITIES, dtype=object)[priority]),
        "comments": pa.array(np.where(no_number, "___", "").astype(object)),
    }
    ordered = [columns[name] for name in tables.LAB_COLUMNS]
    lines = pc.binary_join_element_wise(*ordered, ",")
    lines = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")
    return "".join(lines.to_pylist())


def _fixed(values: np.ndarray, decimals: int) -> np.ndarray:
    """Non-negative numbers with `decimals` decimals, as text ("7.5", "140")."""
    scale = 10**decimals
    scaled = np.rint(values * scale).astype(np.int64)
    whole = scaled // scale
    if decimals == 0:
        return whole.astype(str).astype(object)
    frac = np.char.zfill((scaled % scale).astype(str), decimals)
    return np.char.add(np.char.add(whole.astype(str), "."), frac).astype(object)


def _ints(values: np.ndarray) -> pa.Array:
    return pc.cast(pa.array(values, type=pa.int64()), pa.string())


def _times(values: np.ndarray) -> pa.Array:
    """ "2180-07-23 14:05:00": Arrow's text of a timestamp in seconds."""
    return pc.cast(pa.array(values.astype("datetime64[s]")), pa.string())

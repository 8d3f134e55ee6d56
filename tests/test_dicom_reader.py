"""DICOM ingest: decoding and quarantine on real files, linking, duplicates, shards, privacy."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from clinfuse.assets.ingest.dicom import reader as dicom_reader
from clinfuse.assets.ingest.dicom.header import uid_key
from clinfuse.assets.ingest.dicom.pixels import ResizeArea, ScalePercentiles
from clinfuse.assets.ingest.dicom.reader import ImageError, load_image, read_file
from clinfuse.assets.ingest.dicom.study_index import INDEX_DTYPES, ingest_dicom
from clinfuse.assets.ingest.quarantine import (
    BAD_VALUE,
    DECODER_CRASHED,
    DUPLICATE_INSTANCE,
    MISSING_FILE,
    NO_ADMISSION,
    NO_PIXEL_DATA,
    NOT_DICOM,
    TRUNCATED_FILE,
    UNDECODABLE_PIXELS,
    UNKNOWN_PATIENT,
    UNSUPPORTED_TRANSFER_SYNTAX,
)
from clinfuse.models.shards import ShardReader

PYDICOM_FILES = Path(pydicom.__file__).parent / "data" / "test_files"
# The shared folder beside the checkout (../shared/realdata), as in test_realdata.py.
REALDATA = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "dicom"
NEEDS_REALDATA = pytest.mark.skipif(
    not REALDATA.is_dir(), reason="../shared/realdata is not beside this checkout"
)
SIZE = 32
ADMISSIONS = pd.DataFrame(
    {
        "subject_id": pd.array([1, 1], dtype="Int64"),
        "hadm_id": pd.array([100, 101], dtype="Int64"),
        "admittime": pd.to_datetime(["2180-01-01 00:00", "2180-02-01 00:00"]),
        "dischtime": pd.to_datetime(["2180-01-03 00:00", "2180-02-05 00:00"]),
    }
)
KNOWN = pd.Series([1, 2], dtype="Int64")
REASON = re.compile(
    r"(truncated file|not a DICOM file(: unreadable)?|no pixel data|duplicate instance"
    r"|unknown patient"
    r"|unknown admission|no admission"
    r"|unsupported transfer syntax(: [\w .()\-\[\]]+)?"
    r"|undecodable pixel data(: (bad image attributes|bad palette|unexpected shape))?"
    r"|decoder crashed)"
)


def write_dicom(
    path: Path,
    pixels: np.ndarray | None = None,
    *,
    patient_id: str | None = "1",
    study: tuple[str, str] | None = ("21800101", "120000"),
    photometric: str = "MONOCHROME2",
    sop_uid: str | None = None,
    **attributes: object,
) -> Path:
    """A small Explicit VR Little Endian file; `pixels` is (H, W), (F, H, W) or (H, W, 3)."""
    if pixels is None:
        pixels = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 7) % 4096
    rgb = photometric == "RGB"
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.Modality = "CR"
    if patient_id is not None:
        ds.PatientID = patient_id
    if study is not None:
        ds.StudyDate, ds.StudyTime = study
    frames = pixels.shape[0] if pixels.ndim == 3 and not rgb else 1
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    if rgb:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_manifest(landing: Path, rows: list[dict[str, object]]) -> None:
    pd.DataFrame(rows).to_csv(landing / "dicom" / "manifest.csv", index=False)


def ingest(landing: Path, tmp: Path, workers: int = 1) -> dicom_reader.DicomIngest:
    return ingest_dicom(landing, tmp / "shards", ADMISSIONS, KNOWN, SIZE, workers=workers)


def outcome(result: dicom_reader.DicomIngest) -> dict[str, str]:
    """path -> 'ingested' or its reject reason (files only)."""
    done = {p: "ingested" for p in result.index["path"]}
    files = result.rejects[~result.rejects["source"].str.startswith("dicom/manifest.csv")]
    done.update(dict(zip(files["source"], files["reason"], strict=True)))
    return done


# --- every real file: ingested or quarantined, nothing crashes --------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    """pydicom's test files and realdata/dicom, all linked to one admission by a manifest."""
    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not beside this checkout")
    root = tmp_path_factory.mktemp("corpus")
    landing = root / "landing"
    shutil.copytree(PYDICOM_FILES, landing / "dicom" / "pydicom")
    shutil.copytree(REALDATA, landing / "dicom" / "realdata")
    files = dicom_reader.discover(landing / "dicom")
    rows = [{"path": p, "subject_id": 1, "study_datetime": "2180-01-01 12:00"} for p in files]
    write_manifest(landing, rows)
    result = ingest(landing, root, workers=2)  # enough files to go through the process pool
    return landing, root / "shards", files, result


def test_every_file_is_ingested_or_quarantined_with_a_plain_reason(corpus) -> None:
    _, _, files, result = corpus
    assert result.seen == len(files) > 200
    assert result.seen == len(result.index) + len(result.rejects)  # no manifest rejects here
    assert sorted(outcome(result)) == sorted(f"dicom/{p}" for p in files)
    assert all(REASON.fullmatch(r) for r in result.rejects["reason"]), set(result.rejects["reason"])
    assert result.index["path"].is_unique and len(result.index) > 50
    assert dict(result.index.dtypes.astype(str)) == INDEX_DTYPES


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("realdata/966.dcm", UNDECODABLE_PIXELS),
        ("realdata/RG2_JPLY.dcm", UNDECODABLE_PIXELS),
        ("realdata/JPEG-lossy.dcm", UNDECODABLE_PIXELS),
        ("realdata/MR_truncated.dcm", TRUNCATED_FILE),
        ("realdata/rtplan_truncated.dcm", TRUNCATED_FILE),
        ("realdata/emri_small_jpeg_2k_lossless_too_short.dcm", TRUNCATED_FILE),
        ("realdata/no_meta.dcm", NOT_DICOM),
        ("realdata/liver_deflate.dcm", f"{UNSUPPORTED_TRANSFER_SYNTAX}: 1.2.840.10008.1.2.8.1"),
        ("realdata/meta_missing_tsyntax.dcm", UNDECODABLE_PIXELS),
        ("pydicom/README.txt", NOT_DICOM),
        ("pydicom/zipMR.gz", NOT_DICOM),
        ("pydicom/rtplan.dcm", NO_PIXEL_DATA),
        ("pydicom/ExplVR_LitEndNoMeta.dcm", NO_PIXEL_DATA),  # no preamble: read with force
        ("pydicom/waveform_ecg.dcm", NO_PIXEL_DATA),
    ],
)
def test_known_bad_files_get_their_reason(corpus, name: str, reason: str) -> None:
    assert outcome(corpus[3])[f"dicom/{name}"].startswith(reason)


@pytest.mark.parametrize(
    "name",
    [
        "JPGExtended.dcm",  # 12-bit JPEG Extended: pylibjpeg only
        "HTJ2KLossless_08_RGB.dcm",  # HTJ2K: pylibjpeg-openjpeg only
        "JLSL_RGB_ILV0.dcm",  # no preamble: needs force
        "OT-PAL-8-face.dcm",  # no file meta, palette colour
        "RG2_JPLY_fixed.dcm",
        "emri_small.dcm",  # multi-frame
        "6154",  # no extension
    ],
)
def test_known_good_files_decode(corpus, name: str) -> None:
    result = read_file(str(REALDATA), name, dicom_reader.Decoding(SIZE))
    assert result.reason is None
    assert result.image.shape == (1, SIZE, SIZE) and result.image.dtype == np.float32
    assert 0.0 <= result.image.min() < result.image.max() <= 1.0
    assert outcome(corpus[3])[f"dicom/realdata/{name}"] in ("ingested", DUPLICATE_INSTANCE)


def test_duplicates_repeat_an_ingested_file(corpus) -> None:
    landing, _, _, result = corpus
    dupes = result.rejects.loc[result.rejects["reason"] == DUPLICATE_INSTANCE, "source"]
    assert len(dupes) > 10  # realdata repeats many of pydicom's files
    kept = set(result.index["instance_key"].dropna())
    for source in dupes:
        ds = pydicom.dcmread(landing / source, stop_before_pixels=True, force=True)
        assert uid_key(ds.SOPInstanceUID) in kept


def test_shards_hold_what_load_image_returns(corpus) -> None:
    landing, shard_dir, _, result = corpus
    reader = ShardReader(shard_dir)
    small = [p for p in result.index["path"] if (landing / p).stat().st_size < 400_000]
    rows = result.index.set_index("path").loc[small]
    assert len(rows) > 40
    for path, row in rows.iterrows():
        expected = load_image(landing / path, SIZE).astype(np.float16)
        np.testing.assert_array_equal(reader.get(row["shard"], int(row["slot"])), expected)


@pytest.mark.parametrize("keep", [200, 387, 1000, 0.5, -10, -1])
def test_a_file_cut_anywhere_is_truncated(keep: float) -> None:
    """In the file meta, mid-header (387: 3 bytes of the next element), mid-value, in the pixels:
    pydicom reads most of these without complaint."""
    data = (PYDICOM_FILES / "CT_small.dcm").read_bytes()
    end = int(len(data) * keep) if isinstance(keep, float) else keep
    with pytest.raises(ImageError) as error:
        load_image(data[:end], SIZE)
    assert error.value.reason == TRUNCATED_FILE


def test_dicm_prefix_with_garbage_is_not_dicom() -> None:
    junk = bytes(128) + b"DICM" + np.random.default_rng(4).bytes(600)
    with pytest.raises(ImageError) as error:
        load_image(junk, SIZE)
    assert error.value.reason == NOT_DICOM


# --- the pixel rule ------------------------------------------------------------------------


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    ramp = np.tile(np.arange(64, dtype=np.uint16) * 60, (64, 1))  # brighter to the right
    mono2 = load_image(write_dicom(tmp_path / "m2.dcm", ramp), SIZE)
    mono1 = load_image(write_dicom(tmp_path / "m1.dcm", ramp, photometric="MONOCHROME1"), SIZE)
    assert mono2[0, :, -1].mean() > 0.9 and mono2[0, :, 0].mean() < 0.1
    assert mono1[0, :, -1].mean() < 0.1 and mono1[0, :, 0].mean() > 0.9  # high stored = dark
    np.testing.assert_allclose(mono1, 1.0 - mono2, atol=1e-6)


@NEEDS_REALDATA
def test_real_monochrome1_matches_its_monochrome2_reading() -> None:
    ds = pydicom.dcmread(REALDATA / "RG1_J2KI.dcm")
    as_stored = load_image(ds, SIZE)
    ds.PhotometricInterpretation = "MONOCHROME2"
    np.testing.assert_allclose(as_stored, 1.0 - load_image(ds, SIZE), atol=1e-5)


def test_multi_frame_gives_the_middle_frame(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 4000, size=(5, 24, 24), dtype=np.uint16)
    stack = load_image(write_dicom(tmp_path / "stack.dcm", frames), SIZE)
    middle = load_image(write_dicom(tmp_path / "middle.dcm", frames[2]), SIZE)
    np.testing.assert_array_equal(stack, middle)


def test_colour_becomes_luminance(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)
    luma = (rgb.astype(np.float64) @ [0.299, 0.587, 0.114]).round().astype(np.uint16)
    colour = load_image(write_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB"), SIZE)
    grey = load_image(write_dicom(tmp_path / "grey.dcm", luma), SIZE)
    np.testing.assert_allclose(colour, grey, atol=0.02)


def test_load_image_takes_a_path_bytes_or_dataset(tmp_path: Path) -> None:
    path = write_dicom(tmp_path / "a.dcm")
    from_path = load_image(path, SIZE)
    np.testing.assert_array_equal(from_path, load_image(path.read_bytes(), SIZE))
    np.testing.assert_array_equal(from_path, load_image(pydicom.dcmread(path), SIZE))
    with pytest.raises(ImageError) as error:
        load_image(b"not dicom at all" * 20, SIZE)
    assert error.value.reason == NOT_DICOM


def test_scale_percentiles_matches_monai() -> None:
    from monai.transforms import ScaleIntensityRangePercentiles

    image = np.random.default_rng(2).gamma(2.0, 300.0, size=(1, 40, 40)).astype(np.float32)
    monai = ScaleIntensityRangePercentiles(0.5, 99.5, 0.0, 1.0, clip=True)(image)
    np.testing.assert_allclose(ScalePercentiles()(image), np.asarray(monai), atol=1e-6)


@pytest.mark.parametrize("shape", [(256, 256), (300, 211), (64, 64), (17, 90), (2048, 1536)])
def test_resize_area_is_monai_resize_bit_for_bit(shape: tuple[int, int]) -> None:
    """ResizeArea calls torch directly; the images must be MONAI Resize's, to the bit."""
    from monai.transforms import Resize

    image = np.random.default_rng(4).gamma(2.0, 300.0, size=(1, *shape)).astype(np.float32)
    monai = np.asarray(Resize((SIZE, SIZE), mode="area")(image).numpy())
    ours = ResizeArea(SIZE)(image)
    assert ours.dtype == np.float32 and ours.shape == (1, SIZE, SIZE)
    np.testing.assert_array_equal(ours, monai)


# --- linking, manifest, duplicates ---------------------------------------------------------


def test_linking_and_manifest(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    d = landing / "dicom"
    write_dicom(d / "in_admission.dcm")
    write_dicom(d / "outside.dcm", study=("21800110", "120000"))
    write_dicom(d / "unknown_subject.dcm", patient_id="999")
    write_dicom(d / "not_an_integer.dcm", patient_id="ABC123")
    write_dicom(d / "no_time.dcm", study=None)
    write_dicom(d / "acquisition_only.dcm", study=None, AcquisitionDateTime="21800202083000")
    write_dicom(d / "sub/content_only.dcm", study=None, ContentDate="21800203", ContentTime="0915")
    write_dicom(d / "named_by_manifest.dcm", patient_id="ABC", study=None)
    write_manifest(
        landing,
        [
            {"path": "named_by_manifest.dcm", "subject_id": 1, "hadm_id": 100},
            {"path": "missing.dcm", "subject_id": 1},
            {"path": "outside.dcm", "subject_id": 1, "study_datetime": "not a time"},
        ],
    )
    result = ingest(landing, tmp_path)
    assert result.seen == 8
    files = result.rejects[~result.rejects["source"].str.startswith("dicom/manifest.csv")]
    assert result.seen == len(result.index) + len(files)
    done = outcome(result)
    assert done["dicom/outside.dcm"] == NO_ADMISSION  # the bad manifest row does not apply
    assert done["dicom/unknown_subject.dcm"] == UNKNOWN_PATIENT
    assert done["dicom/not_an_integer.dcm"] == UNKNOWN_PATIENT
    assert done["dicom/no_time.dcm"] == NO_ADMISSION
    hadm = dict(zip(result.index["path"], result.index["hadm_id"], strict=True))
    assert hadm == {
        "dicom/in_admission.dcm": 100,
        "dicom/acquisition_only.dcm": 101,
        "dicom/sub/content_only.dcm": 101,
        "dicom/named_by_manifest.dcm": 100,
    }
    row = result.index.set_index("path").loc["dicom/sub/content_only.dcm"]
    assert row["study_datetime"] == pd.Timestamp("2180-02-03 09:15")
    manifest = result.rejects[result.rejects["source"].str.startswith("dicom/manifest.csv")]
    assert dict(zip(manifest["source"], manifest["reason"], strict=True)) == {
        "dicom/manifest.csv:2": MISSING_FILE,
        "dicom/manifest.csv:3": f"{BAD_VALUE} study_datetime",
    }


def test_duplicate_instances(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    first = write_dicom(landing / "dicom" / "a" / "first.dcm", sop_uid="1.2.3.4.5")
    shutil.copy(first, landing / "dicom" / "b_same_bytes.dcm")
    other = np.full((16, 16), 9, dtype=np.uint16)
    write_dicom(landing / "dicom" / "c_same_uid.dcm", other, sop_uid="1.2.3.4.5")
    write_dicom(landing / "dicom" / "d_other.dcm")
    result = ingest(landing, tmp_path)
    assert outcome(result) == {
        "dicom/a/first.dcm": "ingested",
        "dicom/b_same_bytes.dcm": DUPLICATE_INSTANCE,
        "dicom/c_same_uid.dcm": DUPLICATE_INSTANCE,
        "dicom/d_other.dcm": "ingested",
    }
    assert result.index["instance_key"].iloc[0] == uid_key("1.2.3.4.5")


def test_pool_and_inline_agree(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    rng = np.random.default_rng(3)
    for i in range(dicom_reader.INLINE_BELOW + 4):
        pixels = rng.integers(0, 4096, size=(20, 20), dtype=np.uint16)
        write_dicom(landing / "dicom" / f"{i:02d}.dcm", pixels, study=("21800101", f"{i:02d}0000"))
    (landing / "dicom" / "junk.bin").write_bytes(b"\x00" * 50)
    inline = ingest(landing, tmp_path / "inline", workers=1)
    pooled = ingest(landing, tmp_path / "pooled", workers=2)
    pd.testing.assert_frame_equal(inline.index, pooled.index)
    pd.testing.assert_frame_equal(inline.rejects, pooled.rejects)
    for shard in inline.shards:
        a = np.load(tmp_path / "inline" / "shards" / shard)
        np.testing.assert_array_equal(a, np.load(tmp_path / "pooled" / "shards" / shard))


def crash_on_marked(dicom_dir: str, relatives: list[str], decoding) -> list:
    """A stand-in for a decoder that segfaults on one file."""
    if any("crash" in r for r in relatives):
        os._exit(1)
    return dicom_reader.read_chunk(dicom_dir, relatives, decoding)


def test_a_crashing_worker_costs_one_file(tmp_path: Path) -> None:
    d = tmp_path / "dicom"
    names = [f"{i:02d}.dcm" for i in range(6)] + ["crash.dcm"] + [f"{i:02d}.dcm" for i in (7, 8)]
    for name in names:
        write_dicom(d / name)
    chunks = [names[i : i + 2] for i in range(0, len(names), 2)]
    results = [
        r
        for c in dicom_reader.ordered_map(
            crash_on_marked, str(d), chunks, dicom_reader.Decoding(SIZE), 2
        )
        for r in c
    ]
    assert [r.path for r in results] == names
    assert [r.path for r in results if r.reason] == ["crash.dcm"]
    assert results[names.index("crash.dcm")].reason == DECODER_CRASHED


def test_no_dicom_folder(tmp_path: Path) -> None:
    result = ingest(tmp_path, tmp_path)
    assert result.seen == 0 and result.index.empty and result.rejects.empty
    assert dict(result.index.dtypes.astype(str)) == INDEX_DTYPES


# --- privacy -------------------------------------------------------------------------------

MARKERS = {
    "PatientName": "Zqxfamily^Zqxgiven",
    "PatientBirthDate": "19110911",
    "OtherPatientIDs": "ZQXOTHERID77",
    "AccessionNumber": "ZQXACC4242",
    "InstitutionName": "Zqxinstitution Zqxhospital",
    "InstitutionAddress": "1 Zqxmarker Street",
    "ReferringPhysicianName": "Zqxreferrer^Doc",
    "PerformingPhysicianName": "Zqxperformer^Doc",
    "OperatorsName": "Zqxoperator^Tech",
    "StudyID": "ZQXSTUDY9",
    "StudyDescription": "Zqxstudy description",
    "SeriesDescription": "Zqxseries description",
    "PatientAddress": "2 Zqxhome Road",
    "DeviceSerialNumber": "ZQXSERIAL31337",
    "StationName": "ZQXSTATION",
    "SeriesInstanceUID": "1.2.826.0.1.3680043.9.7777.31415926",
    "FrameOfReferenceUID": "1.2.826.0.1.3680043.9.7777.27182818",
}
UID_MARKERS = {"SOPInstanceUID": "1.2.826.0.1.3680043.9.7777.11235813"}
STUDY_UID = "1.2.826.0.1.3680043.9.7777.16180339"


def test_planted_phi_never_leaves(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    landing = tmp_path / "landing"
    d = landing / "dicom"
    planted = dict(MARKERS, StudyInstanceUID=STUDY_UID)
    write_dicom(d / "kept.dcm", sop_uid=UID_MARKERS["SOPInstanceUID"], **planted)
    write_dicom(d / "mrn.dcm", patient_id="ZQXMRN0001", **planted)  # unknown patient
    broken = write_dicom(d / "broken.dcm", **planted)
    broken.write_bytes(broken.read_bytes()[:-100])  # truncated
    garbled = write_dicom(d / "garbled.dcm", NumberOfFrames="123456789", **planted)
    # An IS value that is text: pydicom's error would quote it.
    garbled.write_bytes(garbled.read_bytes().replace(b"123456789 ", b"ZQXFRAMES "))
    result = ingest(landing, tmp_path)
    assert outcome(result) == {
        "dicom/kept.dcm": "ingested",
        "dicom/mrn.dcm": UNKNOWN_PATIENT,
        "dicom/broken.dcm": TRUNCATED_FILE,
        "dicom/garbled.dcm": UNDECODABLE_PIXELS,
    }

    result.index.to_parquet(tmp_path / "index.parquet", compression=None)
    result.rejects.to_parquet(tmp_path / "rejects.parquet", compression=None)
    blobs = [
        (tmp_path / "index.parquet").read_bytes(),
        (tmp_path / "rejects.parquet").read_bytes(),
        result.index.to_csv().encode(),
        result.rejects.to_csv().encode(),
        *[(tmp_path / "shards" / s).read_bytes() for s in result.shards],
    ]
    captured = capfd.readouterr()
    blobs.append((captured.out + captured.err).encode())
    markers = [*MARKERS.values(), *UID_MARKERS.values(), STUDY_UID, "ZQXMRN0001", "ZQXFRAMES"]
    parts = {p for m in markers for p in re.split(r"[\^ ]", m) if "zqx" in p.lower() or len(p) > 4}
    for part in parts | set(markers):
        assert not any(part.encode() in blob for blob in blobs), part


def test_an_image_over_the_size_limit_is_quarantined_undecoded(tmp_path: Path) -> None:
    """The limit is on what the header declares: the decoder is never asked to allocate."""
    d = tmp_path / "dicom"
    write_dicom(d / "small.dcm")  # 16 x 16 x 2 bytes
    huge = write_dicom(d / "huge.dcm")
    ds = pydicom.dcmread(huge)
    ds.Rows = ds.Columns = 30_000  # declares 1.7 GB; the file still holds 512 bytes
    ds.save_as(huge)
    results = {
        r.path: r
        for r in dicom_reader.read_chunk(
            str(d), ["small.dcm", "huge.dcm"], dicom_reader.Decoding(SIZE)
        )
    }
    assert results["small.dcm"].reason is None
    assert results["huge.dcm"].reason.startswith("image too large")
    tight = dicom_reader.read_file(str(d), "small.dcm", dicom_reader.Decoding(SIZE, 0.0001))
    assert tight.reason.startswith("image too large")

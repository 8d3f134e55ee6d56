"""Chest-radiograph-like DICOM Part-10 files.

The picture is drawn anatomy (body, two lung fields, heart, spine, ribs) with per-image variation
in shape, exposure and noise; the label's only trace is the task's sign (tasks.IMAGE_SIGNS): a
lobar opacity whose presence, size and density follow the channel (pneumonia), the cardiac
silhouette's width, a reticular texture across the lung fields, or the lungs' height
(hyperinflation). The file around it varies in every
way a PACS export does: SOP class, transfer syntax, bit depth, photometric interpretation,
rescale, which date/time attributes are set, folder and file name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from scipy import ndimage

TRANSFER_SYNTAXES = (
    (uid.ExplicitVRLittleEndian, 0.30),
    (uid.ImplicitVRLittleEndian, 0.15),
    (uid.DeflatedExplicitVRLittleEndian, 0.10),
    (uid.RLELossless, 0.15),
    (uid.JPEGLSLossless, 0.15),
    (uid.JPEG2000Lossless, 0.15),
)
COMPRESSED = (uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless)
SOP_CLASSES = {
    "CR": uid.ComputedRadiographyImageStorage,
    "DX": uid.DigitalXRayImageStorageForPresentation,
}
FIRST_NAMES = (
    "JANE",
    "JOHN",
    "MARIA",
    "JAMES",
    "LINDA",
    "ROBERT",
    "SUSAN",
    "DAVID",
    "KAREN",
    "WEI",
)
LAST_NAMES = ("DOE", "SMITH", "GARCIA", "NGUYEN", "JOHNSON", "MUELLER", "ROSSI", "OKAFOR", "KIM")
INSTITUTIONS = ("MERCY GENERAL HOSPITAL", "ST ELSEWHERE MEDICAL CENTER", "RIVERSIDE CLINIC")
PHYSICIANS = ("HOUSE^GREGORY", "GREY^MEREDITH", "KILDARE^JAMES", "QUINN^MICHAELA")


@dataclass(frozen=True)
class Identity:
    """Fake identifying attributes of a patient: the work de-identification has to do."""

    name: str
    birth_date: str
    mrn: str
    address: str
    phone: str


def identity(rng: np.random.Generator, birth_year: int) -> Identity:
    month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
    last = LAST_NAMES[int(rng.integers(len(LAST_NAMES)))]
    first = FIRST_NAMES[int(rng.integers(len(FIRST_NAMES)))]
    street, zip_code = int(rng.integers(1, 999)), int(rng.integers(1000, 9999))
    return Identity(
        name=f"{last}^{first}",
        birth_date=f"{birth_year:04d}{month:02d}{day:02d}",
        mrn=f"MRN{int(rng.integers(1_000_000, 9_999_999))}",
        address=f"{street} MAPLE STREET^^SPRINGFIELD^MA^0{zip_code}",
        phone=f"555-{int(rng.integers(1000, 9999))}",
    )


@dataclass(frozen=True)
class ImageSpec:
    """Everything about one file except its pixels' noise, which comes from `pixel_seed`."""

    path: str  # relative to the landing zone: dicom/...
    subject_id: int
    patient_id: str  # the PatientID tag: str(subject_id), or an MRN for manifest-listed files
    sex: str
    who: Identity
    when: datetime
    time_tags: str  # which attributes carry the time: study | acquisition | content
    extent: float  # opacity extent (0: none)
    modality: str
    transfer_syntax: str
    bits: int
    photometric: str
    rescale: tuple[float, float] | None
    view: str
    study_uid: str
    series_uid: str
    sop_uid: str
    accession: str
    pixel_seed: tuple[int, ...]
    sign: str = "opacity"  # what `extent` draws (tasks.IMAGE_SIGNS)


def choose_format(rng: np.random.Generator) -> dict:
    """The label-free way a file is written."""
    syntaxes, weights = zip(*TRANSFER_SYNTAXES, strict=True)
    rescale = None
    if rng.random() < 0.3:
        rescale = (float(rng.choice([0.5, 1.0, 2.0])), float(rng.choice([0.0, -1024.0, 100.0])))
    return {
        "modality": "CR" if rng.random() < 0.5 else "DX",
        "transfer_syntax": syntaxes[int(rng.choice(len(syntaxes), p=weights))],
        "bits": int(rng.choice([8, 12, 16], p=[0.25, 0.45, 0.30])),
        "photometric": "MONOCHROME1" if rng.random() < 0.3 else "MONOCHROME2",
        "rescale": rescale,
        "time_tags": str(rng.choice(["study", "acquisition", "content"], p=[0.75, 0.15, 0.10])),
        "view": "PA" if rng.random() < 0.6 else "AP",
    }


def choose_path(rng: np.random.Generator, subject_id: int, study: int, sop_uid: str, n: int) -> str:
    """A folder tree and file name like those PACS exports produce, odd ones included."""
    draw = rng.random()
    if draw < 0.60:  # MIMIC-CXR's layout
        return f"dicom/p{str(subject_id)[:2]}/p{subject_id}/s{study}/{sop_uid}.dcm"
    if draw < 0.75:
        return f"dicom/ARCHIVE/{study % 97:02d}/{study}/IMG{n:04d}"
    if draw < 0.85:
        return f"dicom/incoming/{study}_{n}.DCM"
    if draw < 0.95:
        return f"dicom/{subject_id}/{study}/image {n}.dicom"
    return f"dicom/export/{sop_uid}.img"


def make_uid(seed: int, *parts: object) -> str:
    """A valid UID derived from the seed and what it names: the same bytes every run."""
    return uid.generate_uid(entropy_srcs=[str(seed), *(str(p) for p in parts)])


# --- pixels ----------------------------------------------------------------------------------


def _ellipse(
    x: np.ndarray, y: np.ndarray, a: float, b: float, sharpness: float = 14.0
) -> np.ndarray:
    """A soft-edged ellipse mask in [0, 1]."""
    r = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    return 1.0 / (1.0 + np.exp(np.clip((r - 1.0) * sharpness, -40, 40)))


def _smooth_noise(rng: np.random.Generator, size: int, cells: int = 8) -> np.ndarray:
    coarse = rng.normal(size=(cells, cells))
    return ndimage.zoom(coarse, size / cells, order=1)[:size, :size]


def chest_pixels(
    rng: np.random.Generator, size: int, extent: float, sign: str = "opacity"
) -> np.ndarray:
    """A (size, size) float32 image in [0, 1], dense (bone, opacity) bright, air dark.

    Every sign but the opacity draws what pneumonia draws and only then bends it by the score,
    so the anatomy's nuisance is the same across signs."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    xs = x - (0.5 + rng.normal(0, 0.02)) - rng.normal(0, 0.03) * (y - 0.5)  # shift and tilt
    img = 0.08 + 0.45 * _ellipse(xs, y - 0.55, rng.uniform(0.40, 0.47), rng.uniform(0.50, 0.60))
    lung_w, lung_h = rng.uniform(0.12, 0.16), rng.uniform(0.25, 0.32)
    if sign == "hyperinflation":  # taller lungs, a little wider; a few % of nuisance left
        lung_h = 0.285 * math.exp(0.08 * extent) * (lung_h / 0.285) ** 0.25
        lung_w = lung_w * math.exp(0.02 * extent)
    lung_y, gap = rng.uniform(0.42, 0.48), rng.uniform(0.05, 0.08)
    lungs = [_ellipse(xs - side * (gap + lung_w), y - lung_y, lung_w, lung_h) for side in (-1, 1)]
    lung = np.maximum(*lungs)
    img -= rng.uniform(0.25, 0.33) * lung
    heart_at = (xs - 0.06 - rng.normal(0, 0.015), y - lung_y - 0.5 * lung_h)
    heart_density = rng.uniform(0.12, 0.18)
    heart_w, heart_h = rng.uniform(0.14, 0.18), 0.13
    if sign == "silhouette":  # the heart's width follows the score; a few % of nuisance left
        heart_w = 0.16 * math.exp(0.12 * extent) * (heart_w / 0.16) ** 0.25
        heart_h = 0.13 * math.exp(0.04 * extent)
    img += heart_density * _ellipse(*heart_at, heart_w, heart_h, 8.0)
    img += 0.08 * np.exp(-((xs / 0.03) ** 2)) * _ellipse(xs, y - 0.55, 0.1, 0.5)  # spine
    rib_rate = rng.uniform(9.0, 12.0)
    ribs = np.clip(np.cos(2 * np.pi * rib_rate * (y + 0.8 * xs**2)), 0, 1) ** 4
    img += rng.uniform(0.04, 0.08) * ribs * lung
    if sign == "opacity" and extent > 0:
        img += _opacity(rng, xs, y, lungs, (gap, lung_w, lung_y, lung_h), extent)
    if sign == "texture" and extent > 0:
        img += _reticular(rng, size, extent) * lung
    img = ndimage.gaussian_filter(img, sigma=0.4 * size / 64)
    img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05) + rng.normal(0, 0.03) * (x - 0.5)
    img += rng.normal(0, rng.uniform(0.01, 0.03), size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def _opacity(
    rng: np.random.Generator,
    xs: np.ndarray,
    y: np.ndarray,
    lungs: list[np.ndarray],
    geometry: tuple[float, float, float, float],
    extent: float,
) -> np.ndarray:
    """A consolidation in one lung's middle or lower zone: bigger and denser with the extent."""
    gap, lung_w, lung_y, lung_h = geometry
    side = int(rng.integers(2))
    cx = (2 * side - 1) * (gap + lung_w) + rng.normal(0, 0.25 * lung_w)
    cy = lung_y + rng.uniform(0.0, 0.55) * lung_h
    grow = min(extent, 3.0)
    radius = 0.05 + 0.04 * grow
    density = 0.16 + 0.06 * grow
    blob = np.exp(-((xs - cx) ** 2 + (y - cy) ** 2) / (2 * radius**2))
    texture = 0.85 + 0.15 * np.tanh(_smooth_noise(rng, xs.shape[0]))
    return density * blob * texture * lungs[side]


def _reticular(rng: np.random.Generator, size: int, extent: float) -> np.ndarray:
    """A fine net of lines over the whole lung fields (band-passed noise folded at zero), its
    amplitude growing with the extent: diffuse, not focal."""
    noise = rng.normal(size=(size, size))
    fine, coarse = max(size / 128, 0.7), size / 32
    band = ndimage.gaussian_filter(noise, fine) - ndimage.gaussian_filter(noise, coarse)
    net = np.exp(-((band / (np.std(band) or 1.0)) ** 2) * 2.0)  # bright where band crosses 0
    return (0.05 + 0.04 * min(extent, 3.0)) * net


def stored_values(img: np.ndarray, bits: int, photometric: str) -> np.ndarray:
    """Pixel values as stored: BitsStored deep, inverted for MONOCHROME1 (air white)."""
    top = 2**bits - 1
    values = np.round(img * top).astype(np.uint8 if bits == 8 else np.uint16)
    return top - values if photometric == "MONOCHROME1" else values


# --- the file --------------------------------------------------------------------------------


def dataset(spec: ImageSpec, pixels: np.ndarray | None) -> Dataset:
    """The DICOM dataset of a spec; pixels None leaves out PixelData (a bad file)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = SOP_CLASSES[spec.modality]
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = spec.sop_uid
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = spec.sop_uid
    _set_times(ds, spec)
    ds.AccessionNumber = spec.accession
    ds.Modality = spec.modality
    if spec.modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "SYNTHETIC IMAGING"
    ds.InstitutionName = INSTITUTIONS[spec.subject_id % len(INSTITUTIONS)]
    ds.InstitutionAddress = "1 HOSPITAL ROAD, SPRINGFIELD"
    ds.ReferringPhysicianName = PHYSICIANS[spec.subject_id % len(PHYSICIANS)]
    ds.StationName = f"XR{spec.subject_id % 7:02d}"
    ds.StudyDescription = f"CHEST ({spec.view})"
    ds.SeriesDescription = spec.view
    ds.OperatorsName = "TECH^ALEX"
    ds.PatientName = spec.who.name
    ds.PatientID = spec.patient_id
    ds.IssuerOfPatientID = "SYNTH"
    ds.OtherPatientIDs = spec.who.mrn if spec.patient_id != spec.who.mrn else str(spec.subject_id)
    ds.PatientBirthDate = spec.who.birth_date
    ds.PatientSex = spec.sex
    ds.PatientAddress = spec.who.address
    ds.PatientTelephoneNumbers = spec.who.phone
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = spec.view
    ds.StudyInstanceUID = spec.study_uid
    ds.SeriesInstanceUID = spec.series_uid
    ds.StudyID = spec.accession[-6:]
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.PatientOrientation = ["L", "F"] if spec.view == "PA" else ["R", "F"]
    if pixels is not None:
        _set_pixels(ds, spec, pixels)
    return ds


def _set_times(ds: Dataset, spec: ImageSpec) -> None:
    """landing-zone.md's order: StudyDate+StudyTime, else AcquisitionDateTime, else Content*.
    Content is stamped a few minutes after the study starts, as a modality does."""
    content = spec.when + timedelta(minutes=3)
    if spec.time_tags == "study":
        ds.StudyDate, ds.StudyTime = spec.when.strftime("%Y%m%d"), spec.when.strftime("%H%M%S")
        ds.SeriesDate, ds.SeriesTime = ds.StudyDate, ds.StudyTime
    if spec.time_tags in ("study", "acquisition"):
        ds.AcquisitionDateTime = spec.when.strftime("%Y%m%d%H%M%S")
    ds.ContentDate, ds.ContentTime = content.strftime("%Y%m%d"), content.strftime("%H%M%S")
    if spec.time_tags == "acquisition":
        ds.ContentDate, ds.ContentTime = spec.when.strftime("%Y%m%d"), spec.when.strftime("%H%M%S")
    if spec.time_tags == "content":
        ds.ContentDate, ds.ContentTime = spec.when.strftime("%Y%m%d"), spec.when.strftime("%H%M%S")


def _set_pixels(ds: Dataset, spec: ImageSpec, pixels: np.ndarray) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = spec.photometric
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8 if spec.bits == 8 else 16
    ds.BitsStored = spec.bits
    ds.HighBit = spec.bits - 1
    ds.PixelRepresentation = 0
    spacing = f"{430.0 / pixels.shape[0]:.3f}"
    ds.ImagerPixelSpacing = [spacing, spacing]
    if spec.rescale is not None:
        ds.RescaleSlope, ds.RescaleIntercept = spec.rescale
        ds.RescaleType = "US"
    ds.PixelData = pixels.tobytes()
    if spec.transfer_syntax in COMPRESSED:
        ds.compress(spec.transfer_syntax, pixels, generate_instance_uid=False)
    else:
        ds.file_meta.TransferSyntaxUID = spec.transfer_syntax


def write_image(root: Path, spec: ImageSpec, size: int) -> Path:
    """Draws the picture of a spec and writes its Part-10 file; returns the path."""
    rng = np.random.default_rng(list(spec.pixel_seed))
    img = chest_pixels(rng, size, spec.extent, spec.sign)
    pixels = stored_values(img, spec.bits, spec.photometric)
    return save(root, spec, dataset(spec, pixels))


def save(root: Path, spec: ImageSpec, ds: Dataset) -> Path:
    path = root / spec.path
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path

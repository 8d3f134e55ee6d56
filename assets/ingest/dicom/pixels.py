"""From a parsed DICOM dataset to one (1, S, S) float32 image in [0, 1].

The rule, one step per transform (MONAI style: each step is a callable on an array):

1. Frame: a multi-frame object gives its middle frame (index NumberOfFrames // 2), decoded alone;
   the middle of a cine or a volume is the frame most likely to show the anatomy.
2. Colour: PALETTE COLOR goes through its palette to RGB; RGB (pydicom's decoders already turn
   YBR_* into RGB) becomes luminance Y = 0.299 R + 0.587 G + 0.114 B (ITU-R BT.601).
3. Modality LUT (monochrome only): Modality LUT Sequence or Rescale Slope/Intercept, so that
   values are in output units (Hounsfield for CT).
4. VOI LUT (monochrome only): VOI LUT Sequence, else the first Window Center/Width, else none.
5. MONOCHROME1 is negated, so that in every output a higher value is brighter (MONOCHROME2).
6. Resize to (S, S) by area averaging (what `monai.transforms.Resize`, mode "area", computes:
   torch's area interpolation); the aspect ratio is not kept, nothing else (spacing,
   orientation) is either.
7. Robust scaling: the 0.5th and 99.5th percentiles map to 0 and 1, clipped; a flat image is 0.

Scaling runs after resizing: area averaging is linear, so the result differs from scaling first
only by the percentiles being taken on the averaged pixels, and it is two orders of magnitude
cheaper on a 2k x 2k radiograph. A LUT step that cannot be applied (malformed LUT data) is skipped
rather than rejecting the image: step 7 still maps whatever values there are into [0, 1].

Nothing here logs or raises with attribute values: failures are `ImageError(reason)` with a
reason from quarantine.py and, at most, a transfer syntax name as detail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import (
    apply_color_lut,
    apply_modality_lut,
    apply_voi_lut,
    get_decoder,
    pixel_array,
)
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID_dictionary,
)

from clinfuse.assets.ingest.quarantine import (
    IMAGE_TOO_LARGE,
    NO_PIXEL_DATA,
    UNDECODABLE_PIXELS,
    UNSUPPORTED_TRANSFER_SYNTAX,
)

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)  # Pixel Data, Float, Double Float Pixel Data
MAX_FRAME_PIXELS = 1 << 27  # 134 M samples (~11k x 11k RGB): beyond it a header lies
DEFAULT_MAX_IMAGE_MB = 512.0  # limits.max_image_mb (../shared/cli-and-report.md)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)
_STANDARD_UID = re.compile(r"1\.2\.840\.10008(\.\d+)+")

Transform = Callable[[np.ndarray], np.ndarray]


class ImageError(Exception):
    """A file that yields no image; `reason` is a quarantine reason, safe to persist.

    Raised `from None` throughout: a chained pydicom exception's text may quote attribute
    values, and a logged traceback would carry it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --- decoding ---------------------------------------------------------------------------------


def frame_count(ds: Dataset) -> int:
    """NumberOfFrames, 1 when absent or unusable."""
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
    except (TypeError, ValueError):
        return 1
    return max(frames, 1)


def decode_frame(ds: Dataset, max_image_mb: float = DEFAULT_MAX_IMAGE_MB) -> np.ndarray:
    """The frame the rule picks, as pydicom decodes it: (H, W) or (H, W, samples)."""
    if not any(tag in ds for tag in PIXEL_TAGS):
        raise ImageError(NO_PIXEL_DATA)
    tsyntax = transfer_syntax(ds)
    _require_decoder(tsyntax)
    _require_geometry(ds, max_image_mb)
    frames = frame_count(ds)
    try:
        arr = pixel_array(ds, index=frames // 2 if frames > 1 else None)
    except Exception:  # the text may quote values: only its class decides
        raise ImageError(UNDECODABLE_PIXELS) from None
    if arr.ndim == 3 and frames > 1 and arr.shape[-1] not in (3, 4):
        arr = arr[arr.shape[0] // 2]  # a decoder that ignored `index`
    return arr


def transfer_syntax(ds: Dataset) -> UID:
    """The file meta's transfer syntax; for a file without one, the encoding it was read in.

    Only native (not encapsulated) pixel data can be decoded without a stated transfer syntax,
    so the inferred one is stored in the dataset's file meta for pydicom's decoders.
    """
    meta = getattr(ds, "file_meta", None)
    stated = meta.get("TransferSyntaxUID") if meta is not None else None
    if stated:
        return UID(str(stated))
    if _is_encapsulated(ds):
        raise ImageError(f"{UNSUPPORTED_TRANSFER_SYNTAX}: none stated")
    implicit, little = ds.original_encoding
    if implicit is None:
        implicit, little = False, True
    inferred = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = inferred
    return inferred


def _is_encapsulated(ds: Dataset) -> bool:
    element = ds.get_item(0x7FE00010)  # raw (length) or already converted (flag)
    undefined = getattr(element, "is_undefined_length", False)
    return bool(undefined) or getattr(element, "length", None) == 0xFFFFFFFF


def transfer_syntax_label(tsyntax: UID) -> str:
    """A non-identifying label for a reason: the registered name, or a standard UID, or ''."""
    if tsyntax in UID_dictionary:
        return tsyntax.name
    return str(tsyntax) if _STANDARD_UID.fullmatch(str(tsyntax)) else ""


def _require_decoder(tsyntax: UID) -> None:
    try:
        available = get_decoder(tsyntax).is_available
    except NotImplementedError:  # no decoder exists for it (e.g. Deflated Image Frame)
        available = False
    if not available:
        label = transfer_syntax_label(tsyntax)
        raise ImageError(
            f"{UNSUPPORTED_TRANSFER_SYNTAX}: {label}" if label else UNSUPPORTED_TRANSFER_SYNTAX
        )


def _require_geometry(ds: Dataset, max_image_mb: float) -> None:
    """The Image Pixel module's essentials, readable, sane and within the size limit, before a
    decoder allocates: the limit is on what the header declares, so nothing is decoded."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.BitsAllocated)
        str(ds.PhotometricInterpretation)
    except Exception:  # missing, or a value that is no number
        raise ImageError(f"{UNDECODABLE_PIXELS}: bad image attributes") from None
    declared_mb = rows * columns * samples * -(-bits // 8) * frame_count(ds) / 2**20
    if declared_mb > max_image_mb:
        raise ImageError(
            f"{IMAGE_TOO_LARGE}: declares {declared_mb:,.0f} MB of pixel data, "
            f"over limits.max_image_mb = {max_image_mb:g}"
        )
    if min(rows, columns, samples, bits) <= 0 or rows * columns * samples > MAX_FRAME_PIXELS:
        raise ImageError(f"{UNDECODABLE_PIXELS}: bad image attributes")


# --- the transforms ---------------------------------------------------------------------------


class PaletteToRgb:
    """PALETTE COLOR indices through the dataset's palette."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        try:
            return apply_color_lut(arr, self.ds)
        except Exception:
            raise ImageError(f"{UNDECODABLE_PIXELS}: bad palette") from None


class ToLuminance:
    """(H, W, 3+) colour to (H, W) luminance; monochrome passes through."""

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        if arr.ndim == 3:
            return arr[..., :3].astype(np.float64) @ LUMA
        return arr


class ModalityLut:
    """Stored values to output units (Modality LUT Sequence, or Rescale Slope/Intercept)."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        return _or_unchanged(apply_modality_lut, arr, self.ds)


class VoiLut:
    """The first VOI LUT, else the first window; without either the values pass through."""

    def __init__(self, ds: Dataset) -> None:
        self.ds = ds

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        return _or_unchanged(apply_voi_lut, arr, self.ds)


class InvertMonochrome1:
    """MONOCHROME1 (higher = darker) negated, so that higher = brighter as in MONOCHROME2."""

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        return np.negative(arr, dtype=np.float32)  # float32: exact for stored values < 2**24


class ChannelFirst:
    """(H, W) to a finite float32 (1, H, W), the layout MONAI's spatial transforms take."""

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        out = np.asarray(arr, dtype=np.float32)[None]
        if arr.dtype.kind == "f" and not np.isfinite(out).all():  # float pixel data, LUT output
            out = np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
        return out


class ResizeArea:
    """(1, H, W) float32 to (1, S, S) by area averaging: bit for bit `monai.transforms.Resize(
    (S, S), mode="area")` (tests/test_dicom_reader.py compares them).

    torch is called directly, the way MONAI's resize does it: MONAI's per-call bookkeeping
    (metadata tensors, affines) cost 4x the interpolation itself on a 256 x 256 film, per file in
    the ingest pool, and `import monai.transforms` costs ~9 s of CPU and ~370 MB on top of torch.
    """

    def __init__(self, image_size: int) -> None:
        self.size = (image_size, image_size)

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        if arr.shape[1:] == self.size:  # MONAI returns it as is (as float32)
            return np.asarray(arr, dtype=np.float32)
        # Imported here: `import torch` takes a second or two, and readers that never decode
        # skip it (the ingest pool's fork server has it already).
        import torch
        from torch.nn.functional import interpolate

        image = torch.as_tensor(np.ascontiguousarray(arr, dtype=np.float32))
        with torch.no_grad():
            return interpolate(image[None], size=self.size, mode="area")[0].numpy()


class ScalePercentiles:
    """Percentiles [lower, upper] to [0, 1], clipped; a flat image becomes all 0.

    Same result as `monai.transforms.ScaleIntensityRangePercentiles(lower, upper, 0, 1,
    clip=True)`; kept in numpy because MONAI's round trip through torch costs ~20x more than
    the computation on a small image, which is per file in the ingest pool.
    """

    def __init__(self, lower: float = 0.5, upper: float = 99.5) -> None:
        self.lower, self.upper = lower, upper

    def __call__(self, arr: np.ndarray) -> np.ndarray:
        low, high = _percentiles(arr, (self.lower, self.upper))
        if not high > low:
            return np.zeros_like(arr, dtype=np.float32)
        scaled = (arr - low) / (high - low)
        return np.clip(scaled, 0.0, 1.0).astype(np.float32)


def _percentiles(arr: np.ndarray, qs: tuple[float, ...]) -> list[float]:
    """np.percentile's default (linear) method from one sort: faster on a small image, where
    np.percentile's own overhead dominates."""
    ordered = np.sort(arr, axis=None)
    out = []
    for q in qs:
        position = q / 100.0 * (ordered.size - 1)
        below = int(position)
        above = min(below + 1, ordered.size - 1)
        fraction = position - below
        low, high = float(ordered[below]), float(ordered[above])
        out.append(low + (high - low) * fraction)
    return out


def _or_unchanged(step: Callable[[np.ndarray, Dataset], np.ndarray], arr, ds) -> np.ndarray:
    try:
        return step(arr, ds)
    except Exception:  # malformed LUT or window values: see the module docstring
        return arr


def pipeline(ds: Dataset, image_size: int) -> list[Transform]:
    """The transforms for this dataset, in order (steps 2-7 of the module docstring)."""
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    steps: list[Transform] = []
    if photometric == "PALETTE COLOR":
        steps.append(PaletteToRgb(ds))
    steps.append(ToLuminance())
    if photometric.startswith("MONOCHROME"):
        steps += [ModalityLut(ds), VoiLut(ds)]
    if photometric == "MONOCHROME1":
        steps.append(InvertMonochrome1())
    steps += [ChannelFirst(), ResizeArea(image_size), ScalePercentiles()]
    return steps


def compose(steps: Sequence[Transform], arr: np.ndarray) -> np.ndarray:
    for step in steps:
        arr = step(arr)
    return arr


def dataset_image(
    ds: Dataset, image_size: int, max_image_mb: float = DEFAULT_MAX_IMAGE_MB
) -> np.ndarray:
    """(1, S, S) float32 in [0, 1] from a parsed dataset; raises ImageError."""
    frame = decode_frame(ds, max_image_mb)
    image = compose(pipeline(ds, image_size), frame)
    if image.shape != (1, image_size, image_size):  # e.g. a 4-D volume decoded as one frame
        raise ImageError(f"{UNDECODABLE_PIXELS}: unexpected shape")
    return image

"""Robust image loading: 8/16-bit TIFF and PNG, RGB to gray, size checks, optional SEM data-bar crop.

Every file that cannot become a usable gray image raises :class:`ImageError` with the path and the reason.
The header is read first (Pillow opens lazily), so a file that claims 20000x20000 pixels is refused before any
pixel memory is allocated. Files are only ever opened for reading.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

from monitor.errors import MonitorError
from monitor.files import FileTooLarge, NotRegularFile, open_regular, read_regular
from monitor.kinds import FILE_FAILURES

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")


BYTES_PER_PIXEL = 8  # the most an uncompressed pixel takes (16-bit RGBA, float64 gray)

# the bounded set of ImageError kinds (a metric label; the free-text reason goes to the ledger)
ERROR_KINDS = FILE_FAILURES  # what sort of failure an ImageError is (kinds.FailureKind)


class ImageError(MonitorError, ValueError):
    """An image file cannot be used; ``reason`` says why, ``kind`` (one of ERROR_KINDS) says what sort of failure."""

    def __init__(self, path: str | os.PathLike, reason: str, kind: str = "corrupt"):
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown ImageError kind {kind!r}")
        self.path = str(path)
        self.reason = reason
        self.kind = kind
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class ImageLimits:
    min_side: int = 64
    max_pixels: int = 64_000_000
    crop_bottom: int = 0  # rows of the SEM data bar to drop at the bottom
    pixel_size_um: float = 0.0  # micrometres per pixel for defect sizes; 0 = from the SEM's TIFF tags when present
    # images with more pixels than this many times the model's largest training image are refused (0 = no bound):
    # scoring cost grows with the pixel count, and a model has not seen the scale of a much larger image
    max_training_ratio: float = 4.0
    pixels_why: str = field(default="image.max_pixels", init=False, compare=False, repr=False)  # its source

    def __post_init__(self):
        if not (self.max_training_ratio == 0 or self.max_training_ratio >= 1):
            raise ValueError(f"max_training_ratio must be 0 (off) or >= 1, got {self.max_training_ratio}")
        if not (self.pixel_size_um >= 0 and np.isfinite(self.pixel_size_um)):
            raise ValueError(f"pixel_size_um must be >= 0, got {self.pixel_size_um}")
        if self.min_side < 1:
            raise ValueError(f"min_side must be >= 1, got {self.min_side}")
        if self.max_pixels < self.min_side**2:
            raise ValueError(f"max_pixels must be >= min_side**2, got {self.max_pixels}")
        if self.crop_bottom < 0:
            raise ValueError(f"crop_bottom must be >= 0, got {self.crop_bottom}")

    @property
    def max_file_bytes(self) -> int:
        """The most bytes a file of an image within ``max_pixels`` can take: larger files are refused unread."""
        return self.max_pixels * BYTES_PER_PIXEL + (1 << 20)

    def too_large(self, size: int) -> str | None:
        """Why a file of ``size`` bytes is refused unread, or None."""
        if size <= self.max_file_bytes:
            return None
        return (f"file of {size} bytes exceeds the {self.max_file_bytes} bytes an image of at most "
                f"{self.max_pixels} pixels ({self.pixels_why}) can take; refused unread")

    def for_model(self, training_pixels: int | None) -> "ImageLimits":
        """These limits with ``max_pixels`` bounded by ``max_training_ratio`` x the model's largest training image
        (``training_pixels``, None for models saved before it was recorded: no bound but ``max_pixels``)."""
        if not training_pixels or not self.max_training_ratio:
            return self
        bound = int(self.max_training_ratio * training_pixels)
        if bound >= self.max_pixels:
            return self
        out = replace(self, max_pixels=max(bound, self.min_side**2))
        object.__setattr__(out, "pixels_why", f"{self.max_training_ratio:g} x the model's largest training image "
                           f"of {training_pixels} pixels, image.max_training_ratio")
        return out


def to_gray_float(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, C) integer/bool/float array -> float32 gray in [0, 1]."""
    if arr.ndim == 3:
        if arr.shape[2] == 4:  # drop alpha
            arr = arr[..., :3]
        if arr.shape[2] == 3:
            w = np.array([0.299, 0.587, 0.114], dtype=np.float64)
            scale = _scale(arr.dtype)
            return (arr.astype(np.float64) @ w / scale).astype(np.float32)
        arr = arr[..., 0]
    return (arr.astype(np.float32) / np.float32(_scale(arr.dtype))).clip(0, 1)


def _scale(dtype: np.dtype) -> float:
    if dtype == np.bool_:
        return 1.0
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0  # float images are taken to be in [0, 1]


def read_image(path: str | os.PathLike, limits: ImageLimits = ImageLimits(), sha256: str | None = None,
               info: dict | None = None) -> np.ndarray:
    """Read ``path`` as float32 gray (H, W) in [0, 1]. Raises :class:`ImageError`.

    ``info``, when given, receives what the pixels no longer say: ``bits`` (the file's bit depth per sample: 1, 8,
    16 or 32 for floating point), ``pixel_size_um`` (from the SEM's TIFF tags, None when they do not carry it) and
    ``sha256`` (of the bytes read).

    With ``sha256`` (the content the ledger recorded), the bytes are read once, checked against it and decoded
    from memory: what is scored is exactly what was recorded, even if the file is replaced meanwhile (kind
    ``changed`` otherwise)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError(path, "file not found (removed before it could be read?)", "missing") from None
    except OSError as exc:
        raise ImageError(path, f"cannot stat: {exc.strerror or exc}", "unreadable") from None
    if size == 0:
        raise ImageError(path, "empty file (0 bytes)", "empty")
    try:
        # read once, into memory: never a FIFO (it would block), never more than an image within the pixel limit
        # can take (BYTES_PER_PIXEL: 16-bit RGBA or float64, uncompressed), and, with ``sha256``, exactly the
        # content that was recorded
        data = read_regular(path, limits.max_file_bytes)
        if info is not None:
            info["sha256"] = sha256 or hashlib.sha256(data).hexdigest()
        if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
            raise ImageError(path, "the file changed after it was recorded (another content under the same "
                             "name); that content is recorded as an image of its own", "changed")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w * h > limits.max_pixels:
                    raise ImageError(path, f"{w}x{h} pixels exceeds the limit of {limits.max_pixels} pixels "
                                     f"({limits.pixels_why}); refused before decoding", "too_large")
                if min(w, h) < limits.min_side:
                    raise ImageError(path, f"{w}x{h} is too small; both sides must be >= {limits.min_side}",
                                     "too_small")
                im.load()
                arr = _pil_to_array(im)
                if info is not None:
                    info["pixel_size_um"] = _tags_pixel_size(im)
    except ImageError:
        raise
    except NotRegularFile:
        raise ImageError(path, "not a regular file (a FIFO, socket or device)", "unreadable") from None
    except FileTooLarge as exc:
        raise ImageError(path, limits.too_large(exc.size), "too_large") from None
    except PermissionError:
        raise ImageError(path, "permission denied", "permission") from None
    except FileNotFoundError:
        raise ImageError(path, "file not found (removed before it could be read?)", "missing") from None
    except Image.UnidentifiedImageError:
        raise ImageError(path, "not a readable image (unknown or corrupt format)", "unreadable") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(path, f"header size exceeds the limit of {limits.max_pixels} pixels ({exc})",
                         "too_large") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(path, f"truncated or corrupt image data: {exc}") from None
    except Exception as exc:  # a malformed file can make the decoder fail in any way (a TIFF tag of the wrong type)
        raise ImageError(path, f"undecodable image data ({type(exc).__name__}: {exc})") from None
    if arr.dtype.kind == "f" and arr.size and not (0.0 <= float(np.nanmin(arr)) and float(np.nanmax(arr)) <= 1.0):
        raise ImageError(path, f"floating-point image with values in [{float(np.nanmin(arr)):g}, "
                         f"{float(np.nanmax(arr)):g}]; floating-point images must hold [0, 1] (export 8- or 16-bit "
                         "integers)", "unreadable")
    if info is not None:
        info["bits"] = 1 if arr.dtype == np.bool_ else 8 * arr.dtype.itemsize
    gray = to_gray_float(arr)
    if limits.crop_bottom:
        if gray.shape[0] - limits.crop_bottom < limits.min_side:
            raise ImageError(path, f"crop_bottom={limits.crop_bottom} leaves fewer than {limits.min_side} rows",
                             "too_small")
        gray = gray[: gray.shape[0] - limits.crop_bottom]
    if not np.isfinite(gray).all():
        raise ImageError(path, "image holds NaN or infinite values")
    return np.ascontiguousarray(gray)


def _pil_to_array(im: Image.Image) -> np.ndarray:
    mode = im.mode
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("1", "L", "I;16", "I;16B", "I;16L", "I;16N", "RGB", "RGBA", "LA", "F"):
        pass
    elif mode == "I":  # 32-bit int; SEM exporters use it for 16-bit data
        arr = np.asarray(im)
        if arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        raise ValueError(f"32-bit integer image with values outside 0..65535 ({arr.min()}..{arr.max()})")
    else:
        im = im.convert("RGB")
    arr = np.asarray(im)
    if mode == "LA":
        arr = arr[..., 0]
    if mode.startswith("I;16") and arr.dtype != np.uint16:
        arr = arr.astype(np.uint16)
    return arr


# SEM vendors' private TIFF tags that carry the pixel size (the standard X/YResolution tags hold 72 dpi defaults)
_FEI_TAG, _ZEISS_TAG = 34682, 34118  # FEI/Thermo Fisher: INI text, "PixelWidth=<metres>"; Zeiss: "Image Pixel Size"
# "µm" as written (micro sign or Greek mu), and as read back when a writer stored it as UTF-8 in an ASCII tag
_UNITS_UM = {"pm": 1e-6, "nm": 1e-3, "um": 1.0, "µm": 1.0, "μm": 1.0, "Âµm": 1.0, "Î¼m": 1.0, "mm": 1e3}


def pixel_size_um(path: str | os.PathLike) -> float | None:
    """Micrometres per pixel from an SEM TIFF's vendor tags (FEI/Thermo Fisher or Zeiss), else None.

    Only the header is read. The standard resolution tags are not used: SEM software leaves them at 72 dpi."""
    try:
        with open_regular(path) as fh, Image.open(fh) as im:
            return _tags_pixel_size(im)
    except Exception:  # any header Pillow cannot parse: the size is unknown, the image was scored all the same
        return None


def _tags_pixel_size(im: Image.Image) -> float | None:
    try:
        tags = getattr(im, "tag_v2", None)
        if tags is None:
            return None
        fei, zeiss = tags.get(_FEI_TAG), tags.get(_ZEISS_TAG)
    except Exception:
        return None
    fei, zeiss = (t.decode("latin-1") if isinstance(t, bytes) else t if isinstance(t, str) else ""
                  for t in (fei, zeiss))
    m = re.search(r"^\s*PixelWidth\s*=\s*([0-9.eE+-]+)\s*$", fei, re.M)
    if m:
        value = _finite_positive(m.group(1), 1e6)  # metres
        if value:
            return value
    m = re.search(r"Image Pixel Size\s*=\s*([0-9.eE+-]+)\s*(\S+)", zeiss)
    if m and m.group(2) in _UNITS_UM:
        return _finite_positive(m.group(1), _UNITS_UM[m.group(2)])
    return None


def _finite_positive(text: str, factor: float) -> float | None:
    try:
        v = float(text) * factor
    except ValueError:
        return None
    return v if np.isfinite(v) and v > 0 else None


def read_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a ground-truth mask as bool (H, W): any non-zero pixel (or palette index) is a defect."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(im)
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageError(path, f"cannot read mask: {exc}") from None
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    mask = arr > 0
    if shape is not None and mask.shape != tuple(shape):
        raise ImageError(path, f"mask is {mask.shape[1]}x{mask.shape[0]}, image is {shape[1]}x{shape[0]}")
    return mask


def list_images(paths: list[str | os.PathLike]) -> list[Path]:
    """Expand files and folders into a sorted list of image files (non-recursive, hidden files skipped)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.iterdir()
                              if q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".")))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return out

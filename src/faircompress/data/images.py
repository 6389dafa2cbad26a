"""Decoding image files into the uint8 (N, C, S, S) array a FaceDataset holds, in parallel threads
(OpenCV releases the GIL), with optional face detection and a margin crop."""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from .problems import DatasetError, LoadReport

Detector = Literal["none", "haar", "dlib"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
_DETECT_SIDE = 400  # faces are searched on a copy at most this many pixels on its long side


@dataclass(frozen=True)
class Preprocess:
    size: int                 # output side in pixels
    channels: int = 1         # 1 = grayscale, 3 = RGB
    detector: Detector = "none"
    margin: float = 0.1       # added on each side of a detected face, as a fraction of its size


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def load_images(paths: list[Path], prep: Preprocess, report: LoadReport, workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, C, S, S) uint8 and a mask of the ones that could be read. Unreadable files are
    recorded in ``report`` (and stop the load under ``strict``); faces not found are centre-cropped
    and listed."""
    import cv2

    if prep.detector == "dlib":
        _dlib_detector()  # fail now, with a clear message, if dlib is missing
    out = np.zeros((len(paths), prep.channels, prep.size, prep.size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # parallel over images instead
    try:
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            results = pool.map(lambda p: _load_one(p, prep), paths)
            for i, (path, (img, error, face_found)) in enumerate(zip(paths, results)):
                if error:
                    report.problem("unreadable image", path, error)
                    continue
                out[i], ok[i] = img, True
                if not face_found:
                    report.problem("face not found", path, "no face detected: centre crop used", stop_if_strict=False)
    finally:
        cv2.setNumThreads(threads)
    return out, ok


def _load_one(path: Path, prep: Preprocess) -> tuple[np.ndarray | None, str | None, bool]:
    import cv2

    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        return None, f"cannot read ({e.strerror or e})", True
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if buf.size else None
    if img is None:
        return None, "not a decodable image (corrupt or truncated)", True
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    gray = img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    found = True
    if prep.detector != "none":
        box = _detect(gray, prep.detector)
        found = box is not None
        x0, y0, x1, y1 = _with_margin(box, prep.margin, gray.shape) if found else _centre_square(gray.shape)
        img, gray = img[y0:y1, x0:x1], gray[y0:y1, x0:x1]
    if prep.channels == 1:
        img = gray
    elif img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    else:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    shrink = img.shape[0] > prep.size or img.shape[1] > prep.size
    img = cv2.resize(img, (prep.size, prep.size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    return img, None, found


def _with_margin(box: tuple[int, int, int, int], margin: float, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    x, y, w, h = box
    dx, dy = int(round(w * margin)), int(round(h * margin))
    return max(0, x - dx), max(0, y - dy), min(shape[1], x + w + dx), min(shape[0], y + h + dy)


def _centre_square(shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    h, w = shape[:2]
    side = min(h, w)
    x0, y0 = (w - side) // 2, (h - side) // 2
    return x0, y0, x0 + side, y0 + side


_local = threading.local()


def _detect(gray: np.ndarray, detector: str) -> tuple[int, int, int, int] | None:
    """The largest face as (x, y, w, h) in ``gray``'s pixels, or None."""
    import cv2

    scale = min(1.0, _DETECT_SIDE / max(gray.shape))
    small = cv2.resize(gray, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else gray
    if detector == "haar":
        if not hasattr(_local, "haar"):  # one cascade per thread: detectMultiScale is not thread-safe
            _local.haar = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, "haarcascade_frontalface_default.xml"))
        side = min(small.shape) // 5
        boxes = [tuple(b) for b in _local.haar.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(side, side))]
    else:
        boxes = [(r.left(), r.top(), r.width(), r.height()) for r in _dlib_detector()(small, 1)]
    if not boxes:
        return None
    x, y, w, h = max(boxes, key=lambda b: b[2] * b[3])
    return tuple(int(round(v / scale)) for v in (x, y, w, h))


def _dlib_detector():
    try:
        import dlib
    except ImportError as e:
        raise DatasetError("detector 'dlib' (the paper's HOG detector) needs the dlib package: pip install dlib; "
                           "the default detector 'haar' needs nothing more") from e
    if not hasattr(_local, "dlib"):
        _local.dlib = dlib.get_frontal_face_detector()
    return _local.dlib

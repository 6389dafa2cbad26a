"""Write a FaceDataset as an image folder: one PNG per image plus labels.csv."""
from __future__ import annotations

import csv
import os
from pathlib import Path

from PIL import Image

from ..atomic import atomic_path
from .dataset import SPLITS, UNKNOWN, FaceDataset


def write_image_folder(ds: FaceDataset, out: str | os.PathLike) -> int:
    """PNGs under ``images/<split>/`` and ``labels.csv`` (path, label, label_name, subject, split, attributes).

    Every file is written under a temp name then renamed; the CSV last, so its presence means a complete folder.
    """
    if ds.is_features:
        raise ValueError(f"{ds.name} holds precomputed features, not images: there is no picture to write")
    out = Path(out)
    attrs = list(ds.attributes)
    rows = []
    for i in range(len(ds)):
        split = SPLITS[ds.split[i]]
        rel = f"images/{split}/{i:06d}.png"
        img = ds.images[i].transpose(1, 2, 0)  # (H, W, C)
        with atomic_path(out / rel) as tmp:
            Image.fromarray(img[..., 0] if img.shape[2] == 1 else img).save(tmp, format="PNG")
        row = [rel, int(ds.labels[i]), ds.class_names[ds.labels[i]], ds.subjects[i], split]
        for a in attrs:
            code = int(ds.attributes[a][i])
            row.append("unknown" if code == UNKNOWN else ds.attribute_groups[a][code])
        rows.append(row)
    with atomic_path(out / "labels.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "label_name", "subject", "split", *attrs])
        w.writerows(rows)
    return len(rows)

"""What hashing a dataset by content costs: a fake CK+-sized tree of 10,000 PNGs (640x490 grey,
face-like content, about CK+'s file sizes), hashed as `faircompress run` does before every study.

Prints the tree's size, the time to hash it (warm page cache; cold too when this process may drop
the caches), and the rate against a single-thread SHA-256 of the same bytes in memory.

Usage: .venv/bin/python benchmarks/data_identity.py [--files 10000] [--keep DIR]
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from faircompress.data.identity import manifest  # noqa: E402


def face_like_png(rng: np.random.Generator) -> bytes:
    """A smooth shaded oval with texture and sensor noise: compresses about as well as a CK+ frame."""
    y, x = np.mgrid[0:490, 0:640]
    oval = ((x - 320) / 180.0) ** 2 + ((y - 245) / 230.0) ** 2
    img = 60 + 120 * (oval < 1) * (1 - 0.4 * oval) + 25 * np.sin(x / rng.uniform(8, 20)) * np.cos(y / rng.uniform(8, 20))
    img += rng.normal(0, 6, img.shape)
    ok, buf = cv2.imencode(".png", np.clip(img, 0, 255).astype(np.uint8))
    assert ok
    return buf.tobytes()


def write_tree(root: Path, n: int) -> int:
    rng = np.random.default_rng(0)
    bases = [face_like_png(rng) for _ in range(20)]
    total = 0
    for i in range(n):
        folder = root / "cohn-kanade-images" / f"S{i // 180:03d}" / f"{(i // 18) % 10:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        data = bases[i % len(bases)] + i.to_bytes(8, "little")  # unique bytes after IEND, as distinct files have
        (folder / f"S{i // 180:03d}_{(i // 18) % 10:03d}_{i % 18:08d}.png").write_bytes(data)
        total += len(data)
    return total


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--keep", type=Path, default=None, help="write the tree here and keep it")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="identity-"))
    t = time.perf_counter()
    total = write_tree(root, args.files)
    print(f"tree: {args.files} PNGs, {total / 1e6:.0f} MB ({total / args.files / 1e3:.0f} kB each), written in {time.perf_counter() - t:.1f} s")
    sample = (root / "cohn-kanade-images" / "S000" / "000" / "S000_000_00000000.png").read_bytes() * 50
    t = time.perf_counter()
    hashlib.sha256(sample).hexdigest()
    rate = len(sample) / (time.perf_counter() - t)
    print(f"SHA-256 in memory, one thread: {rate / 1e6:.0f} MB/s -> {total / rate:.2f} s for the tree's bytes")
    if drop_caches():
        t = time.perf_counter()
        manifest(root)
        print(f"hash the tree, cold page cache: {time.perf_counter() - t:.2f} s")
    else:
        print("hash the tree, cold page cache: not measured (cannot drop the page cache here)")
    times = []
    for _ in range(3):
        t = time.perf_counter()
        m = manifest(root)
        times.append(time.perf_counter() - t)
    print(f"hash the tree, warm page cache: {min(times):.2f} s (best of 3; {len(m.files)} files, "
          f"{total / min(times) / 1e6:.0f} MB/s = {total / min(times) / rate:.2f}x the one-thread in-memory rate)")
    memo = Path(tempfile.mkdtemp()) / "digests.json"
    manifest(root, memo=memo)
    t = time.perf_counter()
    again = manifest(root, memo=memo)
    assert again.files == m.files
    print(f"hash the tree again with the digest memo (images unchanged; labels would be re-read): {time.perf_counter() - t:.2f} s")
    if args.keep is None:
        import shutil

        shutil.rmtree(root)


if __name__ == "__main__":
    main()

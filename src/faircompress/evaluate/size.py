"""Size measures of a deployable ONNX file: zipped bytes (the paper's measure) and what is inside."""
from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import numpy as np

KERNEL_MIN_ELEMENTS = 1024  # what counts as a kernel: biases and BatchNorm vectors are smaller (and TFLite
                            # leaves tensors under this size in float)
MB = 1e6  # the paper's MB


def is_kernel(array: np.ndarray) -> bool:
    """A weight tensor that pruning, clustering and quantisation act on, as stored in an ONNX file."""
    return array.size >= KERNEL_MIN_ELEMENTS


def zipped_size(path: str | os.PathLike) -> int:
    """Bytes of a zip archive holding the file, DEFLATE at the default level (as `zip` does)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.write(path, arcname=Path(path).name)
    return buf.getbuffer().nbytes


def onnx_size_report(path: str | os.PathLike) -> dict:
    """raw and zipped bytes; parameters and non-zeros over all initializers; distinct values and
    sparsity per kernel (initializers of >= 1,024 elements; for int8 kernels, the stored codes)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    params = nonzero = 0
    kernels = {}
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        params += a.size
        nonzero += int(np.count_nonzero(a))
        if is_kernel(a):
            kernels[init.name] = {"size": int(a.size), "distinct": int(np.unique(a).size), "sparsity": float(1 - np.count_nonzero(a) / a.size),
                                  "dtype": str(a.dtype)}
    return {"raw_bytes": os.path.getsize(path), "zipped_bytes": zipped_size(path), "parameters": int(params),
            "nonzeros": int(nonzero), "kernels": kernels}

"""One thread policy for every parallel runtime the pipeline touches.

On a small CPU (a robot's 2 cores, shared) the runtimes fight: torch's OpenMP pool, OpenBLAS,
OpenCV, numba and the detector's TFLite (XNNPACK) pool each start one thread per core and
busy-wait between calls, so a pipeline that calls them in turn spends its time spinning. The
policy here gives the cores to the one stage that gains from them, the DFF network (measured:
``evaluation/bench_dff.py --runtimes``), and keeps every other stage on one thread:

- DFF network: ``threads`` intra-op threads (ONNX Runtime, OpenVINO or torch), one inter-op;
- detector (TFLite/XNNPACK), OpenCV, OpenBLAS, numba: one thread each (small images and
  matrices: a second thread costs more in hand-over than it saves).

``threads=None`` means ``default_threads()``: all cores this process may use, at most 2.
``apply`` sets what can be set in a running process and the environment variables that the
libraries read when they are imported later; it imports none of them itself (torch in
particular stays out of an ONNX Runtime process).
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

MAX_DEFAULT_THREADS = 2
# Read at import by OpenMP (torch), OpenBLAS (numpy), MKL and numba.
_ENV_NETWORK = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_ENV_SINGLE = ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class ThreadPolicy:
    network: int   # DFF network intra-op threads
    detector: int  # detector runtime (TFLite XNNPACK) threads
    opencv: int
    blas: int
    numba: int


def available_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    return min(MAX_DEFAULT_THREADS, available_cores())


def policy(threads: int | None = None) -> ThreadPolicy:
    """The policy for ``threads`` network threads (``None``: ``default_threads()``)."""
    n = default_threads() if threads is None else int(threads)
    if n < 1:
        raise ValueError(f"threads must be >= 1 (or None for the default), got {threads}")
    return ThreadPolicy(network=n, detector=1, opencv=1, blas=1, numba=1)


def apply(threads: int | None = None) -> ThreadPolicy:
    """Configure every runtime of this process for ``threads``; returns the policy applied.
    Process-wide: torch, OpenCV and OpenBLAS have one setting per process."""
    p = policy(threads)
    for name in _ENV_NETWORK:
        os.environ[name] = str(p.network)
    os.environ["OPENBLAS_NUM_THREADS"] = str(p.blas)
    os.environ["NUMBA_NUM_THREADS"] = str(p.numba)
    if "torch" in sys.modules:  # only when already imported: the ONNX path never needs it
        set_torch_threads(p.network)
    import cv2

    cv2.setNumThreads(p.opencv)
    limit_blas_threads(p.blas)
    _set_numba_threads(p.numba)
    return p


def set_torch_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # allowed once, before any inter-op work: already set
        pass


def _set_numba_threads(n: int) -> None:
    """numba's pool only exists after its first parallel kernel (the package's kernels are
    serial): launching it here just to size it would start threads for nothing."""
    numba = sys.modules.get("numba")
    if numba is None:
        return
    try:
        from numba.np.ufunc import parallel

        if parallel._is_initialized:
            numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    except (ImportError, AttributeError, ValueError):
        pass


def limit_blas_threads(n: int) -> int | None:
    """Set OpenBLAS's thread count in this process; returns the old count (None if unknown).

    numpy's OpenBLAS reads OPENBLAS_NUM_THREADS only when loaded; afterwards its own setter is
    the only way (found in the loaded libraries, numpy wheels name it scipy_openblas*).
    """
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = [line.split()[-1] for line in f if line.strip()]
        libs = {p for p in paths if "openblas" in p.lower() and ".so" in p}
    except OSError:
        return None
    for lib in sorted(libs):
        try:
            handle = ctypes.CDLL(lib)
        except OSError:
            continue
        for prefix in ("scipy_openblas", "openblas"):
            for suffix in ("64_", ""):
                setter = getattr(handle, f"{prefix}_set_num_threads{suffix}", None)
                getter = getattr(handle, f"{prefix}_get_num_threads{suffix}", None)
                if setter is not None and getter is not None:
                    old = int(getter())
                    setter(int(n))
                    return old
    return None


def onnxruntime_session_options(threads: int):
    """ONNX Runtime options for ``threads`` intra-op threads that do not spin between calls
    (spinning workers would take the core from the next stage of the pipeline)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts

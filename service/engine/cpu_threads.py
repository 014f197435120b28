"""How many threads the calling thread's parallel CPU work may use.

Paddle's CPU ops and the project's fused kernels parallelise with OpenMP, its matrix products with MKL. Both
runtimes keep the thread count per calling thread (OpenMP's `nthreads` ICV, MKL's thread-local setting), so two
threads of one process can each run with their own budget: the engine thread and the image decoder split the
cores instead of each starting a full team and fighting over them.

The paddle CPU wheel ships both runtimes (Intel's libiomp5 and libmklml_intel in `paddle/libs`). Where they are
missing (GPU builds without them, other wheels) the budget cannot be set and these functions do nothing.
"""

from __future__ import annotations

import ctypes
import os
from functools import cache
from pathlib import Path


@cache
def _runtimes() -> tuple[ctypes.CDLL | None, ctypes.CDLL | None]:
    """(OpenMP, MKL): the libraries paddle itself loaded (same path, so the same handles), or None."""
    import paddle

    libs = Path(paddle.__file__).resolve().parent / "libs"

    def load(name: str) -> ctypes.CDLL | None:
        try:
            return ctypes.CDLL(str(libs / name)) if (libs / name).exists() else None
        except OSError:
            return None

    omp, mkl = load("libiomp5.so"), load("libmklml_intel.so")
    if omp is not None:
        omp.omp_get_max_threads.restype = ctypes.c_int
        omp.omp_set_num_threads.argtypes = [ctypes.c_int]
    if mkl is not None:
        # the upper-case names are MKL's C interface; the lower-case exports take Fortran-style pointers
        mkl.MKL_Set_Num_Threads_Local.argtypes = [ctypes.c_int]
        mkl.MKL_Set_Num_Threads_Local.restype = ctypes.c_int
    return omp, mkl


def thread_budget() -> int:
    """Threads the calling thread's parallel regions use now (OMP_NUM_THREADS unless changed for this thread)."""
    omp, _ = _runtimes()
    if omp is not None:
        return max(1, int(omp.omp_get_max_threads()))
    return max(1, int(os.environ.get("OMP_NUM_THREADS", "") or os.cpu_count() or 1))


def set_thread_budget(threads: int) -> None:
    """Let the calling thread's OpenMP regions and MKL calls use `threads` threads (other threads keep theirs)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    omp, mkl = _runtimes()
    if omp is not None:
        omp.omp_set_num_threads(threads)
    if mkl is not None:
        mkl.MKL_Set_Num_Threads_Local(threads)

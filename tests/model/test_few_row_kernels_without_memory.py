"""The few-row kernels allocate each thread's partial sums per call. When that allocation fails they must say so
(return 0, which the wrappers turn into a MemoryError, as for every other kernel buffer) instead of writing through
a null pointer, which kills the whole server. Run in a child process whose address space is capped just above what
it already uses, so that a product with large partial sums cannot get them."""

from __future__ import annotations

import subprocess
import sys

from model import cpu_kernels

_CAPPED = r"""
import resource, sys
import numpy as np
import model  # noqa: F401  (the runtime settings the server has)
from model import cpu_kernels
lib = cpu_kernels._load(sys.argv[1])
K, N = 1, 1 << 25  # a thread's partial sums of one row: 128 MiB
x = np.ones((1, K), np.float32)
w16 = np.full((K, N), 0x3F80, np.uint16)  # bf16 1.0
w32 = np.ones((K, N), np.float32)
q, scales = np.ones((K, N), np.int8), np.ones((1, N), np.float32)
y = np.full((1, N), np.nan, np.float32)
small = np.empty((1, 65536), np.float32)
lib.janus_linear_rows_bf16(x.ctypes.data, w16.ctypes.data, None, small.ctypes.data, 1, K, 65536)  # threads start
used = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + (64 << 20), resource.RLIM_INFINITY))
print(lib.janus_linear_rows_bf16(x.ctypes.data, w16.ctypes.data, None, y.ctypes.data, 1, K, N),
      lib.janus_linear_rows(x.ctypes.data, w32.ctypes.data, None, y.ctypes.data, 1, K, N),
      lib.janus_linear_rows_int8(x.ctypes.data, q.ctypes.data, scales.ctypes.data, 64, None, y.ctypes.data, 1, K, N),
      bool(np.isnan(y).all()))
"""


def test_few_row_kernels_report_a_failed_allocation_instead_of_crashing():
    done = subprocess.run([sys.executable, "-c", _CAPPED, str(cpu_kernels.build())], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["0", "0", "0", "True"]  # each refused, the output untouched

"""Products from bf16 weights at many rows (decode steps of several rows, speculative windows, short prompts): the
register-blocked kernel against float64 products on the widened weights, at every row count from 1 to 40 and at
63, 64, 65 and 127, on shapes that are not multiples of its blocking, in each build: the machine's own CPU with and
without MKL, AVX2 without AVX-512, and the compiler's portable default (plain SSE2 on x86-64).

Its blocking (see linear_blocked.c): tiles of up to 3 (portable), 6 (AVX2) or 8 (AVX-512) rows by 16 or 32
columns, tasks of 256 columns, panels of 256 weight rows, passes of 128 rows. K = 300 is one panel and a part one,
N = 547 two tasks and a part one whose last strip is partly filled. The row-streaming kernel (up to 32 rows a pass,
tiles of up to 8 rows by 32 columns with AVX-512 and 4 rows by 16 columns otherwise, columns in chunks of 65,536 /
rows sums) is checked the same way in each build, and `linear` with the kernels switched off."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest
from paddle import nn

from model import cpu_kernels
from model.layer_ops import BF16_ROWS_MAX, linear
from tests.model.bf16_values import assert_float32_close, bf16_bits, bf16_to_float32

EVERY_ROW_COUNT = [*range(1, 41), 63, 64, 65, 127]


def _has_avx2() -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return False
    return {"avx2", "fma"} <= set(flags.split())


@pytest.fixture(scope="module", params=["native", "native-without-mkl", "avx2", "portable"])
def built(request, tmp_path_factory):
    """The kernels of one build: (its name, the loaded library)."""
    if request.param == "native":
        return request.param, cpu_kernels._load(cpu_kernels.build())
    if request.param == "avx2" and not _has_avx2():
        pytest.skip("the CPU has no AVX2 and FMA")
    arch = {"native-without-mkl": None, "avx2": ["-march=x86-64-v3"], "portable": []}[request.param]
    path = cpu_kernels.build(tmp_path_factory.mktemp(f"kernels-{request.param}"),
                             use_mkl=request.param != "native-without-mkl", arch=arch)
    return request.param, cpu_kernels._load(path)


def _product(lib, kernel: str, x: np.ndarray, bits: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """y = x @ widened(bits) + bias through one kernel, into an output that starts as NaN (a value it never writes
    shows)."""
    M, K = x.shape
    N = bits.shape[1]
    xt, weight = paddle.to_tensor(x), paddle.to_tensor(bits, dtype="bfloat16")
    bias_t = None if bias is None else paddle.to_tensor(bias)
    out = paddle.full([M, N], float("nan"), "float32")
    function = getattr(lib, kernel)
    done = function(xt.data_ptr(), weight.data_ptr(), None if bias_t is None else bias_t.data_ptr(), out.data_ptr(),
                    M, K, N)
    assert function.restype is None or done == 1  # the few-row kernel returns nothing
    return out.numpy()


def _case(seed: int, M: int, K: int, N: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)).astype(np.float32), bf16_bits(rng, K, N, scale=K**-0.5),
            rng.standard_normal(N).astype(np.float32))


@pytest.mark.parametrize("rows", EVERY_ROW_COUNT)
def test_blocked_kernel_matches_float64_at_every_row_count(built, rows):
    _, lib = built
    x, bits, bias = _case(rows, rows, 300, 547)
    w = bf16_to_float32(bits)
    assert_float32_close(_product(lib, "janus_linear_blocked_bf16", x, bits, bias), x, w, bias)
    assert_float32_close(_product(lib, "janus_linear_blocked_bf16", x, bits, None), x, w, np.zeros(547))


@pytest.mark.parametrize("rows", [1, 3, 6, 8, 9, 16, 33, 127, 128, 129, 300])
@pytest.mark.parametrize(("K", "N"), [(256, 512), (17, 5), (1, 40), (513, 33), (64, 2080)])
def test_blocked_kernel_at_shapes_on_and_off_its_blocking(built, rows, K, N):
    """Exact multiples of the blocking (no part panel, task or strip), fewer columns than one strip, a single weight
    row, one row past a panel, a part task of a single strip; past 128 rows, more than one pass over the
    weights."""
    _, lib = built
    x, bits, bias = _case(rows * K + N, rows, K, N)
    assert_float32_close(_product(lib, "janus_linear_blocked_bf16", x, bits, bias), x, bf16_to_float32(bits), bias)


@pytest.mark.parametrize("rows", [3, 8, 40, 127, 128, 200])
def test_many_row_entry_matches_float64(built, rows):
    """janus_linear_bf16, what `linear` calls past BF16_ROWS_MAX rows: the blocked kernel, or from 128 rows with MKL
    widened panels through MKL's sgemm."""
    _, lib = built
    x, bits, bias = _case(rows + 7, rows, 300, 547)
    assert_float32_close(_product(lib, "janus_linear_bf16", x, bits, bias), x, bf16_to_float32(bits), bias)


def test_blocked_kernel_does_not_depend_on_the_rows_beside_a_row(built):
    """A row's result is the same bits whatever block of rows it is computed in: each output is the bias plus the
    products summed in order of k, in one tile."""
    _, lib = built
    x, bits, bias = _case(5, 40, 300, 547)
    alone = np.stack([_product(lib, "janus_linear_blocked_bf16", x[i:i + 1], bits, bias)[0] for i in range(0, 40, 7)])
    together = _product(lib, "janus_linear_blocked_bf16", x, bits, bias)[::7]
    np.testing.assert_array_equal(alone, together)


FEW_ROW_COUNTS = [*range(1, 18), 23, 24, 31, 32, 33, 40, 64, 65]


@pytest.mark.parametrize("rows", FEW_ROW_COUNTS)
@pytest.mark.parametrize(("K", "N"), [(300, 547), (17, 5), (1, 40), (64, 2080)])
def test_few_row_kernel_matches_float64_in_every_build(built, rows, K, N):
    """janus_linear_rows_bf16, what `linear` calls up to BF16_ROWS_MAX rows, in each build: every row count of one
    tile (up to 4 or 8 rows) and of two and three, row counts of one pass (up to 32) and of two and three passes;
    K = 300 leaves each thread's range of weight rows a part group of eight, N = 547 columns past its last vector
    pair, (17, 5) no vector at all, (1, 40) a single weight row, (64, 2080) many vectors on one thread and, from 32
    rows, two column chunks."""
    _, lib = built
    x, bits, bias = _case(rows * 7 + K, rows, K, N)
    w = bf16_to_float32(bits)
    assert_float32_close(_product(lib, "janus_linear_rows_bf16", x, bits, bias), x, w, bias)
    assert_float32_close(_product(lib, "janus_linear_rows_bf16", x, bits, None), x, w, np.zeros(N))


@pytest.mark.parametrize(("K", "N"), [(300, 547), (64, 2080)])
def test_few_row_kernel_gives_each_row_its_product_alone(built, K, N):
    """Up to BF16_ROWS_MAX rows a row's outputs are the bits of its product computed alone, whatever the rows beside
    it, the tile it falls in or the column chunks its row count makes: what lets a speculative window of several
    positions and a decode step of one agree exactly."""
    _, lib = built
    x, bits, bias = _case(K + N, BF16_ROWS_MAX, K, N)
    alone = np.stack([_product(lib, "janus_linear_rows_bf16", x[i:i + 1], bits, bias)[0]
                      for i in range(BF16_ROWS_MAX)])
    for rows in (2, 3, 8, 9, 12, 16, 17, 24, BF16_ROWS_MAX):
        together = _product(lib, "janus_linear_rows_bf16", x[:rows], bits, bias)
        np.testing.assert_array_equal(together, alone[:rows], err_msg=f"{rows} rows")


@pytest.mark.parametrize("rows", EVERY_ROW_COUNT)
def test_linear_from_bf16_weights_matches_float64_at_every_row_count(kernel_build, rows):
    """Through `linear`, which picks the few-row kernel up to BF16_ROWS_MAX rows and the blocked one above."""
    x, bits, bias = _case(rows + 1000, rows, 300, 547)
    layer = nn.Linear(300, 547)
    layer.weight = paddle.base.framework.EagerParamBase.from_tensor(paddle.to_tensor(bits, dtype="bfloat16"))
    layer.bias.set_value(bias)
    out = linear(layer, paddle.to_tensor(x.reshape(rows, 1, 300)))
    assert out.shape == [rows, 1, 547]
    assert_float32_close(out.numpy().reshape(rows, 547), x, bf16_to_float32(bits), bias)


@pytest.mark.parametrize("rows", [1, 8, 9, 40, 127])
def test_linear_from_bf16_weights_without_the_kernels_matches_float64(monkeypatch, rows):
    """With the kernels switched off (JANUS_CPU_KERNELS=off) `linear` widens the weight and calls Paddle's matmul:
    the same products."""
    monkeypatch.setenv("JANUS_CPU_KERNELS", "off")
    assert cpu_kernels.library() is None
    x, bits, bias = _case(rows + 2000, rows, 300, 547)
    layer = nn.Linear(300, 547)
    layer.weight = paddle.base.framework.EagerParamBase.from_tensor(paddle.to_tensor(bits, dtype="bfloat16"))
    layer.bias.set_value(bias)
    assert_float32_close(linear(layer, paddle.to_tensor(x)).numpy(), x, bf16_to_float32(bits), bias)


_READS_AT_THE_END = """
import ctypes, mmap, sys
import numpy as np
lib = ctypes.CDLL(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
for rows, K, N in [(1, 300, 547), (5, 300, 547), (8, 17, 40), (8, 300, 33), (12, 300, 547)]:
    page = mmap.PAGESIZE
    size = (K * N * 2 // page + 2) * page
    area = mmap.mmap(-1, size)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    assert libc.mprotect(base + size - page, page, 0) == 0  # reading the last page is a segmentation fault
    w = np.frombuffer(area, np.uint16, K * N, size - page - K * N * 2).reshape(K, N)
    rng = np.random.default_rng(rows)
    w[:] = ((rng.standard_normal((K, N)).astype(np.float32).view(np.uint32)) >> 16).astype(np.uint16)
    x = rng.standard_normal((rows, K)).astype(np.float32)
    y = np.empty((rows, N), np.float32)
    function = lib.janus_linear_blocked_bf16
    function.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int] * 3
    assert function(x.ctypes.data, w.ctypes.data, None, y.ctypes.data, rows, K, N) == 1
    expected = x.astype(np.float64) @ (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    assert np.allclose(y, expected, rtol=1e-4, atol=1e-3), (rows, K, N)
print("ok")
"""


def test_blocked_kernel_reads_nothing_past_the_end_of_the_weights():
    """The weights end where an unreadable page starts: the kernel must not read a byte past them, e.g. by loading
    a whole strip of 32 columns where fewer are left (one row block reads its strips in place, so the part strip at
    the end must be copied first). A read past the end kills the process: it runs in one of its own."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _READS_AT_THE_END, str(cpu_kernels.build())], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stderr[-2000:])

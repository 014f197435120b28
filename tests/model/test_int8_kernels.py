"""Products from int8 weights (a scale per output column for each group of weight rows) against float64 products on
the dequantized weights, in each build of the kernels: the machine's own CPU with and without MKL, AVX2 without
AVX-512, and the compiler's portable default.

The kernels' blocking: the streaming kernel (int8_rows.c) sums 8 weight rows before applying their scale, splits
the rows among threads and handles up to 8 rows of x per pass; the blocked one (int8_blocked.c) has tiles of 3, 6
or 8 rows by 16 or 32 columns, tasks of 256 columns, panels of 256 weight rows, passes of 128 rows; from 128 rows
with MKL, sgemm on dequantized panels. K = 300 is one panel and a part one and not a multiple of 8 or of the group,
N = 547 two tasks and a part one whose last strip is partly filled, and not a multiple of 8.

The kernels read q held in pairs of rows: the tests hand them q laid out by `_held`, written from the layout's
definition (model/cpu_kernels/int8_pairs.h) element by element, and compare with the plain matrix's product. Odd K
(17, 7, 513) ends in a lone row."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import paddle
import pytest

from model import cpu_kernels
from model.cpu_kernels import int8

ROW_COUNTS = [1, 2, 3, 8, 9, 17, 32, 300, 600]
KERNELS = ["janus_linear_rows_int8", "janus_linear_blocked_int8", "janus_linear_int8"]


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


def _weights(rng: np.random.Generator, K: int, N: int, group: int) -> tuple[np.ndarray, np.ndarray]:
    """q [K, N] over the whole int8 range (both signs, -127..127) and scales that differ from group to group by up
    to 8x, so that a scale taken from the wrong group or a byte read without its sign moves the result."""
    q = rng.integers(-127, 128, size=(K, N), dtype=np.int8)
    scales = (rng.uniform(0.125, 1.0, size=(int8.scale_rows(K, group), N)) / (127 * K**0.5)).astype(np.float32)
    return q, scales


def _held(q: np.ndarray) -> np.ndarray:
    """q's bytes in pairs of rows, placed one row at a time from the layout's definition: q[k, n] of a pair at
    (k - k % 2) * N + 2n + k % 2, an odd K's last row at (K - 1) * N + n."""
    K, N = q.shape
    flat = np.empty(K * N, np.int8)
    for k in range(K):
        if K % 2 and k == K - 1:
            flat[k * N:(k + 1) * N] = q[k]
        else:
            flat[(k - k % 2) * N + 2 * np.arange(N) + k % 2] = q[k]
    return flat.reshape(K, N)


def _dequantized(q: np.ndarray, scales: np.ndarray, group: int) -> np.ndarray:
    """Independent of the code under test: each weight times its group's scale, in float64."""
    rows = np.arange(q.shape[0]) // group
    return q.astype(np.float64) * scales.astype(np.float64)[rows]


def _assert_close(ours: np.ndarray, x: np.ndarray, w: np.ndarray, bias: np.ndarray | None,
                  activation_bits: int = 32) -> None:
    """Within float32 accumulation-order error of the exact product: a few units in the last place of the largest
    |x| @ |w| term, far below any real mistake (one weight row lost or one scale wrong moves results by ~1/K).
    activation_bits 16 (the few-row kernel's integer path): each activation rounded to int16 against the largest
    |x| of its chunk of weight rows moves by at most half a step, max |x[m]| / 65534 at most, so y[m, n] by at most
    that times sum_k |w[k, n]|: added to the tolerance element by element (a tenth of a lost weight row's size)."""
    exact = x.astype(np.float64) @ w + (0 if bias is None else bias)
    scale = (np.abs(x).astype(np.float64) @ np.abs(w)).max()
    atol = np.full(exact.shape, 4e-6 * scale)
    if activation_bits == 16:
        atol += np.abs(x).max(axis=1, keepdims=True).astype(np.float64) / 65534 * np.abs(w).sum(axis=0)
    assert np.all(np.abs(ours - exact) <= atol), f"largest excess {np.max(np.abs(ours - exact) - atol):.3g}"


def _bits(lib, kernel: str) -> int:
    """Bits of the activations inside a kernel: the few-row one rounds them to int16 on AVX2 and AVX-512BW CPUs."""
    return lib.janus_int8_rows_activation_bits() if kernel == "janus_linear_rows_int8" else 32


def _product(lib, kernel: str, x: np.ndarray, q: np.ndarray, scales: np.ndarray, group: int,
             bias: np.ndarray | None) -> np.ndarray:
    """y through one kernel, into an output that starts as NaN (a value it never writes shows)."""
    M, K = x.shape
    N = q.shape[1]
    xt, qt, st = paddle.to_tensor(x), paddle.to_tensor(_held(q)), paddle.to_tensor(scales)
    bias_t = None if bias is None else paddle.to_tensor(bias)
    out = paddle.full([M, N], float("nan"), "float32")
    done = getattr(lib, kernel)(xt.data_ptr(), qt.data_ptr(), st.data_ptr(), group,
                                None if bias_t is None else bias_t.data_ptr(), out.data_ptr(), M, K, N)
    assert done == 1
    return out.numpy()


def _case(seed: int, M: int, K: int, N: int, group: int):
    rng = np.random.default_rng(seed)
    q, scales = _weights(rng, K, N, group)
    return rng.standard_normal((M, K)).astype(np.float32), q, scales, rng.standard_normal(N).astype(np.float32)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows", ROW_COUNTS)
@pytest.mark.parametrize("group", [8, 64, 304])  # 304 >= K: one scale per output column
def test_int8_kernel_matches_float64_on_dequantized_weights(built, kernel, rows, group):
    _, lib = built
    x, q, scales, bias = _case(rows * 7 + group, rows, 300, 547, group)
    w = _dequantized(q, scales, group)
    _assert_close(_product(lib, kernel, x, q, scales, group, bias), x, w, bias, _bits(lib, kernel))
    _assert_close(_product(lib, kernel, x, q, scales, group, None), x, w, None, _bits(lib, kernel))


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("rows", [1, 2, 9, 130])
@pytest.mark.parametrize(("K", "N"), [(256, 512), (17, 5), (7, 40), (513, 33), (64, 2080), (1000, 9)])
def test_int8_kernel_at_shapes_on_and_off_its_blocking(built, kernel, rows, K, N):
    """Exact multiples of the blocking, fewer columns than a vector, fewer weight rows than one step of 8, one row
    past two panels, a part task of a single strip, many groups over few columns."""
    _, lib = built
    group = 32
    x, q, scales, bias = _case(rows * K + N, rows, K, N, group)
    _assert_close(_product(lib, kernel, x, q, scales, group, bias), x, _dequantized(q, scales, group), bias,
                  _bits(lib, kernel))


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_kernel_refuses_a_group_it_cannot_step_through(built, kernel):
    """A group that is not a multiple of 8 would let the streaming kernel's steps straddle two scales: refused (0),
    the output untouched, by every entry alike."""
    _, lib = built
    x, q, scales, bias = _case(3, 2, 40, 16, 12)
    out = paddle.full([2, 16], float("nan"), "float32")
    xt, qt, st = paddle.to_tensor(x), paddle.to_tensor(q), paddle.to_tensor(scales)
    if kernel == "janus_linear_rows_int8":
        assert getattr(lib, kernel)(xt.data_ptr(), qt.data_ptr(), st.data_ptr(), 12, None, out.data_ptr(),
                                    2, 40, 16) == 0
    assert getattr(lib, kernel)(xt.data_ptr(), qt.data_ptr(), st.data_ptr(), 0, None, out.data_ptr(), 2, 40, 16) == 0
    assert np.isnan(out.numpy()).all()


@pytest.mark.parametrize("rows", ROW_COUNTS)
def test_int8_linear_matches_float64_through_the_wrapper(kernel_build, rows):
    """int8.linear, what the layers call: the streaming kernel up to rows_max rows, the many-row entry above, on
    [rows, 1, K] activations."""
    x, q, scales, bias = _case(rows + 1000, rows, 300, 547, 64)
    out = int8.linear(paddle.to_tensor(x.reshape(rows, 1, 300)), paddle.to_tensor(_held(q)),
                      paddle.to_tensor(scales), 64, paddle.to_tensor(bias))
    assert out.shape == [rows, 1, 547]
    lib = cpu_kernels.library()
    bits = _bits(lib, "janus_linear_rows_int8") if rows <= int8.rows_max(lib) else 32
    _assert_close(out.numpy().reshape(rows, 547), x, _dequantized(q, scales, 64), bias, bits)


@pytest.mark.parametrize("rows", [8, 32, 127])
def test_int8_linear_gives_a_row_the_same_result_beside_other_rows_on_the_integer_path(kernel_build, rows):
    """A decode row's product must not depend on how many rows share its step: on the integer path the streaming
    kernel computes each row on its own (its activations rounded against its own largest) and takes every step of
    up to 127 rows, so each row equals its product alone, bit for bit. (With the blocked kernel from 5 rows, as
    before, rows of a step of 5 or more came out in float32 and differed from the same rows alone.)"""
    lib = cpu_kernels.library()
    if lib.janus_int8_rows_activation_bits() != 16:
        pytest.skip("no integer path on this CPU (neither AVX2 nor AVX-512BW): the float path keeps the blocked kernel "
                    "from 5 rows")
    x, q, scales, bias = _case(77, rows, 300, 547, 64)
    qt, st, bt = paddle.to_tensor(_held(q)), paddle.to_tensor(scales), paddle.to_tensor(bias)
    together = int8.linear(paddle.to_tensor(x), qt, st, 64, bt).numpy()
    for r in sorted({0, 1, rows // 2, rows - 1}):
        alone = int8.linear(paddle.to_tensor(x[r:r + 1]), qt, st, 64, bt).numpy()
        np.testing.assert_array_equal(together[r:r + 1], alone, err_msg=f"row {r} of {rows}")


@pytest.mark.parametrize("K", [300, 256, 301])  # a part group at the end; whole groups only; a lone last row
def test_int8_linear_without_the_kernels_computes_the_same_product(monkeypatch, K):
    """With the kernels off, Paddle's ops on the dequantized weight (its pairs of rows undone): the same product."""
    monkeypatch.setenv("JANUS_CPU_KERNELS", "off")
    x, q, scales, bias = _case(K, 3, K, 40, 64)
    out = int8.linear(paddle.to_tensor(x), paddle.to_tensor(_held(q)), paddle.to_tensor(scales), 64,
                      paddle.to_tensor(bias))
    _assert_close(out.numpy(), x, _dequantized(q, scales, 64), bias)


def test_int8_linear_refuses_an_input_of_the_wrong_width(kernel_build):
    _, q, scales, _ = _case(1, 1, 40, 16, 8)
    with pytest.raises(ValueError, match="input width 39"):
        int8.linear(paddle.zeros([2, 39]), paddle.to_tensor(q), paddle.to_tensor(scales), 8, None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_int8_few_row_kernel_passes_a_nan_or_infinite_activation_on(built, bad):
    """A row holding a NaN or an infinity has no finite output in the float product (NaN where a weight is zero, an
    infinity or NaN elsewhere); the integer path must not round it into a finite int16. The other row stays exact."""
    _, lib = built
    x, q, scales, _ = _case(11, 2, 300, 547, 64)
    q[7, :5] = 0
    x[0, 7] = bad
    out = _product(lib, "janus_linear_rows_int8", x, q, scales, 64, None)
    assert not np.isfinite(out[0]).any()
    _assert_close(out[1:], x[1:], _dequantized(q, scales, 64), None, _bits(lib, "janus_linear_rows_int8"))

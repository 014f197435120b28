"""numpy views of CPU tensors and tensors made through them."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model.host_memory import host_view, to_tensor, zeros_on_demand


def test_a_view_shares_memory_both_ways():
    tensor = paddle.zeros([2, 3], "float32")
    view = host_view(tensor)
    view[1, 2] = 7.0
    assert tensor.numpy()[1, 2] == 7.0
    tensor.add_(paddle.ones([2, 3], "float32"))
    assert view[0, 0] == 1.0


def test_a_view_keeps_its_tensor_alive():
    view = host_view(paddle.full([1000], 3.0, "float32"))  # the tensor has no other reference
    paddle.zeros([1000], "float32")  # would reuse freed memory
    assert (view == 3.0).all()


def test_strided_views_are_refused():
    with pytest.raises(ValueError, match="contiguous"):
        host_view(paddle.zeros([4, 4], "float32")[:, 1:])


@pytest.mark.parametrize("array", [np.arange(6, dtype=np.int64).reshape(2, 3), np.linspace(0, 1, 5, dtype=np.float32),
                                   np.zeros((0, 4), np.float32), np.array([True, False])])
def test_to_tensor_on_the_cpu_holds_the_array(array):
    tensor = to_tensor(array, paddle.CPUPlace())
    assert list(tensor.shape) == list(array.shape)
    np.testing.assert_array_equal(tensor.numpy(), array)


def test_zeros_on_demand_become_resident_as_they_are_written(resident_mib):
    before = resident_mib()
    pool = zeros_on_demand([256, 1024, 1024], "float32")  # 1 GiB
    assert resident_mib() - before < 64, "the whole pool became resident at creation"
    view = host_view(pool)
    assert view[::64, ::256, ::256].max() == 0 and view[::64, ::256, ::256].min() == 0
    view[:32] = 1.5  # 128 MiB written
    grown = resident_mib() - before
    assert 120 < grown < 200
    assert float(pool[:32].mean()) == 1.5 and float(pool[32:34].abs().max()) == 0.0


def test_zeros_on_demand_keep_their_memory_alive():
    pool = zeros_on_demand([1000], "float32")
    pool[3] = 2.0
    paddle.zeros([1000], "float32")
    np.testing.assert_array_equal(host_view(pool)[:5], [0, 0, 0, 2, 0])
    assert pool.place.is_cpu_place() and pool.dtype == paddle.float32


def test_zeros_on_demand_of_other_dtypes_are_zeros():
    pool = zeros_on_demand([3, 4], "bfloat16")
    assert pool.dtype == paddle.bfloat16 and float(pool.astype("float32").abs().sum()) == 0.0

"""numpy views of CPU tensors and tensors made through them."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model.host_memory import host_view, to_tensor


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

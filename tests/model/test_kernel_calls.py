"""The Python side of a kernel call: the mode read from the environment, the tensors checked, the output made."""

from __future__ import annotations

import numpy as np
import paddle
import pytest

from model import cpu_kernels


def test_mode_follows_the_environment_each_time_it_changes(monkeypatch):
    monkeypatch.setenv("JANUS_CPU_KERNELS", "off")
    assert cpu_kernels.mode() == "off"
    monkeypatch.setenv("JANUS_CPU_KERNELS", " Require ")
    assert cpu_kernels.mode() == "require"
    monkeypatch.setenv("JANUS_CPU_KERNELS", "off")
    assert cpu_kernels.mode() == "off"
    monkeypatch.delenv("JANUS_CPU_KERNELS")
    assert cpu_kernels.mode() == "auto"
    monkeypatch.setenv("JANUS_CPU_KERNELS", "")
    with pytest.raises(ValueError, match="must be one of"):  # empty is not a mode, twice (no value is remembered)
        cpu_kernels.mode()
    with pytest.raises(ValueError, match="must be one of"):
        cpu_kernels.mode()


@pytest.mark.parametrize("through_paddle_empty", [False, True])
def test_kernel_outputs_are_float32_cpu_tensors_of_the_shape_asked_for(monkeypatch, through_paddle_empty):
    if through_paddle_empty:  # a Paddle without the C entry point
        monkeypatch.setattr(cpu_kernels, "_new_tensor", None)
    out = cpu_kernels.empty_float32(paddle.ones([2, 3, 5]).shape)
    assert out.shape == [2, 3, 5] and out.dtype == paddle.float32 and out.place.is_cpu_place()
    assert out.is_contiguous() and out.stop_gradient
    out[:] = 7.0  # writable, and its own memory
    assert np.array_equal(out.numpy(), np.full((2, 3, 5), 7.0, np.float32))
    assert cpu_kernels.empty_float32([0, 4]).shape == [0, 4]


def test_dtype_check_tells_float32_from_the_rest():
    assert cpu_kernels.is_dtype(paddle.ones([2]), paddle.float32)
    for other in ("float64", "bfloat16", "int8", "float16"):
        tensor = paddle.ones([2]).astype(other)
        assert not cpu_kernels.is_dtype(tensor, paddle.float32)
        assert cpu_kernels.is_dtype(tensor, tensor.dtype)
    assert cpu_kernels.for_tensors(paddle.ones([2]), paddle.ones([2]).astype("bfloat16")) is None
    assert cpu_kernels.for_tensors(paddle.ones([2]), paddle.ones([2])) is not None

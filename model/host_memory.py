"""numpy arrays over the memory of CPU Paddle tensors (no copy), for bookkeeping that Paddle's eager ops make slow,
and zero-filled CPU tensors whose memory becomes resident only as it is written."""

from __future__ import annotations

import ctypes
import math

import numpy as np
import paddle

_NUMPY_DTYPES = {
    paddle.float32: np.float32, paddle.float64: np.float64, paddle.float16: np.float16,
    paddle.bfloat16: np.uint16,  # the bits: copies and writes only, no arithmetic
    paddle.int64: np.int64, paddle.int32: np.int32, paddle.uint8: np.uint8, paddle.bool: np.bool_,
}


_PADDLE_DTYPES = {numpy_type: paddle_type for paddle_type, numpy_type in _NUMPY_DTYPES.items()
                  if paddle_type != paddle.bfloat16}  # numpy has no bfloat16: uint16 stays uint16


def host_view(tensor: paddle.Tensor) -> np.ndarray:
    """A numpy array sharing `tensor`'s memory: writes to either show in both. The array keeps the tensor alive.

    The tensor must be on the CPU and contiguous (`.contiguous()` first if it may be a strided view)."""
    if not tensor.place.is_cpu_place():
        raise ValueError(f"host_view needs a CPU tensor, got one on {tensor.place}")
    if not tensor.is_contiguous():
        raise ValueError("host_view needs a contiguous tensor")
    dtype = np.dtype(_NUMPY_DTYPES[tensor.dtype])
    shape = tuple(tensor.shape)
    count = math.prod(shape)
    if count == 0:
        return np.empty(shape, dtype)
    buffer = (ctypes.c_byte * (count * dtype.itemsize)).from_address(tensor.data_ptr())
    buffer.owner = tensor  # the array's base is this buffer: the tensor lives as long as the array
    return np.frombuffer(buffer, dtype=dtype).reshape(shape)


def to_tensor(array: np.ndarray, place: paddle.CPUPlace | paddle.CUDAPlace) -> paddle.Tensor:
    """A tensor holding `array` on `place`. On the CPU it is filled through `host_view`: `paddle.to_tensor` costs
    more per call and, in Paddle 3.3.1, leaves about 110 bytes behind every time (engine steps make it often)."""
    if not place.is_cpu_place():
        return paddle.to_tensor(array, place=place)
    array = np.asarray(array)
    tensor = paddle.empty(list(array.shape), _PADDLE_DTYPES[array.dtype.type])
    if array.size:
        host_view(tensor)[...] = array
    return tensor


def zeros_on_demand(shape: list[int], dtype: str) -> paddle.Tensor:
    """A zero-filled tensor on the current device. On the CPU its memory comes from numpy's calloc, which for large
    sizes maps pages that the kernel zero-fills the first time each is written: a large pool (the KV cache) becomes
    resident as it fills, not all at start. (`paddle.zeros` writes every byte at once; `paddle.empty` may hand back
    used memory.)"""
    numpy_dtype = np.dtype(dtype) if dtype in ("float32", "float64", "float16") else None
    if paddle.get_device() != "cpu" or numpy_dtype is None or math.prod(shape) == 0:
        return paddle.zeros(shape, dtype=dtype)
    # from_dlpack shares the array's memory; the tensor keeps the array alive through the capsule's deleter
    return paddle.utils.dlpack.from_dlpack(np.zeros(shape, numpy_dtype))

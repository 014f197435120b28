"""Reading torch's zip checkpoints (`pytorch_model*.bin`) without torch, one tensor at a time.

A torch checkpoint is a zip archive: `<name>/data.pkl` pickles the state dict, each tensor refers to a storage
stored as its own member `<name>/data/<key>`. The pickle is read with an unpickler that knows only the few classes a
state dict needs (nothing else can be constructed: a weights file cannot run code), and storages are read when a
tensor is asked for, so memory holds one tensor at a time, not the whole file.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.checkpoint.errors import CheckpointError

# torch storage class -> numpy dtype of its elements (bf16 as its uint16 bits)
_STORAGES = {
    "FloatStorage": np.float32, "BFloat16Storage": np.uint16, "HalfStorage": np.float16,
    "DoubleStorage": np.float64, "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


@dataclass(frozen=True, slots=True)
class _StorageType:
    name: str


@dataclass(frozen=True, slots=True)
class _Storage:
    key: str
    dtype: np.dtype
    is_bf16: bool


@dataclass(frozen=True, slots=True)
class LazyTensor:
    storage: _Storage
    offset: int  # in elements
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage: _Storage, offset: int, shape: tuple, stride: tuple, *_: object) -> LazyTensor:
    return LazyTensor(storage, int(offset), tuple(int(s) for s in shape), tuple(int(s) for s in stride))


def _rebuild_parameter(data: LazyTensor, *_: object) -> LazyTensor:
    return data


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _rebuild_parameter
        if module == "torch" and name in _STORAGES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"a weights file may not contain {module}.{name}")

    def persistent_load(self, saved_id: tuple) -> _Storage:
        kind, storage_type, key, _location, _numel = saved_id
        if kind != "storage" or not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unknown persistent object {kind!r}")
        return _Storage(str(key), np.dtype(_STORAGES[storage_type.name]), storage_type.name == "BFloat16Storage")


def iter_tensors(path: Path) -> Iterator[tuple[str, np.ndarray, bool]]:
    """(key, array, is_bf16) for every tensor of a torch zip checkpoint, read one at a time."""
    try:
        archive = zipfile.ZipFile(path)
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise CheckpointError(f"{path}: cannot read torch checkpoint (no data.pkl in the archive)")
        prefix = pickles[0][: -len("data.pkl")]
        state = _Unpickler(archive.open(pickles[0]), encoding="utf-8").load()
    except (zipfile.BadZipFile, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError) as err:
        raise CheckpointError(f"{path}: cannot read torch checkpoint ({type(err).__name__}: {err})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    with archive:
        for key, tensor in state.items():
            if not isinstance(tensor, LazyTensor):
                raise CheckpointError(f"{path}: {key!r} is not a tensor")
            yield key, _read(archive, prefix, key, tensor, path), tensor.storage.is_bf16


def _read(archive: zipfile.ZipFile, prefix: str, key: str, tensor: LazyTensor, path: Path) -> np.ndarray:
    dtype = tensor.storage.dtype
    try:
        raw = archive.read(f"{prefix}data/{tensor.storage.key}")
    except (KeyError, zipfile.BadZipFile) as err:
        raise CheckpointError(f"{path}: cannot read the data of {key!r} ({err})") from None
    elements = np.frombuffer(raw, dtype=dtype)
    extent = 1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride, strict=True)) if all(tensor.shape) else 0
    if tensor.offset + extent > elements.size:
        raise CheckpointError(f"{path}: {key!r} lies past the end of its storage")
    view = np.lib.stride_tricks.as_strided(elements[tensor.offset:], shape=tensor.shape,
                                           strides=[s * dtype.itemsize for s in tensor.stride])
    return np.ascontiguousarray(view)  # a copy: the storage's bytes go when this tensor is handed on

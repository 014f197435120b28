"""Minimal safetensors reader/writer on numpy memory maps.

Our own implementation because numpy has no bfloat16: BF16 tensors are handed out as their raw uint16 bits (and
written from them), which keeps bf16 checkpoints lossless and lets loading memory-map instead of copying.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from model.checkpoint.errors import CheckpointError

_NUMPY_OF = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_CODE_OF = {np.dtype(v): k for k, v in _NUMPY_OF.items() if k != "BF16"}


def read_header(path: Path) -> tuple[dict, int]:
    try:
        with open(path, "rb") as f:
            raw_len = f.read(8)
            if len(raw_len) != 8:
                raise CheckpointError(f"{path}: truncated safetensors file (no header)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > 100_000_000:
                raise CheckpointError(f"{path}: corrupt safetensors header length {header_len}")
            header = json.loads(f.read(header_len))
    except FileNotFoundError:
        raise CheckpointError(f"weights file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: corrupt safetensors header ({err})") from None
    header.pop("__metadata__", None)
    return header, 8 + header_len


def read_metadata(path: Path) -> dict[str, str]:
    """The file's `__metadata__` (empty when it has none)."""
    try:
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            metadata = json.loads(f.read(header_len)).get("__metadata__") or {}
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError, AttributeError) as err:
        raise CheckpointError(f"{path}: cannot read its metadata ({err})") from None
    return metadata if isinstance(metadata, dict) else {}


def load(path: Path) -> dict[str, tuple[np.ndarray, str]]:
    """name -> (memory-mapped array, safetensors dtype code). BF16 arrays hold uint16 bits."""
    header, data_start = read_header(path)
    size = path.stat().st_size
    mapped = np.memmap(path, dtype=np.uint8, mode="r") if size > data_start else np.zeros(0, np.uint8)
    out: dict[str, tuple[np.ndarray, str]] = {}
    for name, info in header.items():
        code = info.get("dtype")
        if code not in _NUMPY_OF:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {code!r}")
        begin, end = info["data_offsets"]
        if data_start + end > size:
            raise CheckpointError(f"{path}: tensor {name!r} lies past the end of the file (truncated?)")
        dtype = np.dtype(_NUMPY_OF[code])
        count = int(np.prod(info["shape"], dtype=np.int64))
        if (end - begin) != count * dtype.itemsize:
            raise CheckpointError(f"{path}: tensor {name!r} byte size does not match its shape {info['shape']}")
        arr = mapped[data_start + begin:data_start + end].view(dtype).reshape(info["shape"])
        out[name] = (arr, code)
    return out


class SafetensorsFile:
    """Reads one tensor at a time with plain file reads: no mapping stays alive, so resident memory grows only
    by the tensor being copied into the network (memory-mapping a whole multi-GB file would count it all)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header, self._data_start = read_header(path)
        size = path.stat().st_size
        for name, info in self.header.items():
            if info.get("dtype") not in _NUMPY_OF:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info.get('dtype')!r}")
            begin, end = info["data_offsets"]
            if self._data_start + end > size:
                raise CheckpointError(f"{path}: tensor {name!r} lies past the end of the file (truncated?)")
            count = int(np.prod(info["shape"], dtype=np.int64))
            if end - begin != count * np.dtype(_NUMPY_OF[info["dtype"]]).itemsize:
                raise CheckpointError(f"{path}: tensor {name!r} byte size does not match its shape {info['shape']}")

    def shapes(self) -> dict[str, list[int]]:
        return {name: list(info["shape"]) for name, info in self.header.items()}

    def read(self, name: str) -> tuple[np.ndarray, str]:
        info = self.header[name]
        code = info["dtype"]
        dtype = np.dtype(_NUMPY_OF[code])
        count = int(np.prod(info["shape"], dtype=np.int64))
        arr = np.fromfile(self.path, dtype=dtype, count=count, offset=self._data_start + info["data_offsets"][0])
        if arr.size != count:
            raise CheckpointError(f"{self.path}: tensor {name!r} is truncated")
        return arr.reshape(info["shape"]), code


    def read_into(self, name: str, out: np.ndarray) -> None:
        """Read one tensor into `out` (contiguous, of its size and item size) instead of a new array."""
        info = self.header[name]
        nbytes = info["data_offsets"][1] - info["data_offsets"][0]
        if not out.flags.c_contiguous or out.nbytes != nbytes:
            raise ValueError(f"{name}: cannot read {nbytes} bytes into an array of {out.nbytes}")
        with open(self.path, "rb") as f:
            f.seek(self._data_start + info["data_offsets"][0])
            if f.readinto(memoryview(out).cast("B")) != nbytes:
                raise CheckpointError(f"{self.path}: tensor {name!r} is truncated")


def save(path: Path, tensors: dict[str, tuple[np.ndarray, str]], metadata: dict[str, str] | None = None) -> None:
    """Write name -> (array, dtype code); pass code "BF16" with uint16 bits for bfloat16."""
    header: dict[str, object] = {}
    offset = 0
    ordered = sorted(tensors.items())
    for name, (arr, code) in ordered:
        nbytes = arr.size * arr.dtype.itemsize
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, (arr, _) in ordered:
            f.write(np.ascontiguousarray(arr).tobytes(order="C"))


def dtype_code(arr: np.ndarray) -> str:
    return _CODE_OF[arr.dtype]


class StreamingWriter:
    """Writes a safetensors file one tensor at a time, so that no more than one tensor need be in memory.

    The header's place is reserved up front (sized for the names to come) and filled in, padded with spaces, when
    the file is closed."""

    def __init__(self, path: Path, names: list[str], metadata: dict[str, str] | None = None) -> None:
        self.path = path
        self.metadata = metadata or {}
        # an entry is '"name":{"dtype":"BF16","shape":[...],"data_offsets":[a,b]},': generous room for the numbers
        room = sum(len(json.dumps(n)) + 160 for n in names) + len(json.dumps(self.metadata)) + 64
        self._header_room = room + (-room % 8)
        self._header: dict[str, object] = {}
        self._offset = 0
        self._file = open(path, "wb")  # noqa: SIM115 (closed by close())
        self._file.seek(8 + self._header_room)

    def add(self, name: str, arr: np.ndarray, code: str) -> None:
        """Append one tensor; pass code "BF16" with uint16 bits for bfloat16."""
        data = np.ascontiguousarray(arr)
        self._header[name] = {"dtype": code, "shape": list(arr.shape),
                              "data_offsets": [self._offset, self._offset + data.nbytes]}
        data.tofile(self._file)
        self._offset += data.nbytes

    def close(self) -> None:
        header = dict(self._header)
        if self.metadata:
            header["__metadata__"] = self.metadata
        blob = json.dumps(header, separators=(",", ":")).encode()
        if len(blob) > self._header_room:
            raise ValueError(f"safetensors header of {len(blob)} bytes exceeds the {self._header_room} reserved")
        self._file.seek(0)
        self._file.write(struct.pack("<Q", self._header_room))
        self._file.write(blob + b" " * (self._header_room - len(blob)))
        self._file.close()

    def abort(self) -> None:
        self._file.close()

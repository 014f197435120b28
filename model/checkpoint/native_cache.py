"""One-time conversion of a published checkpoint into the network's own layout, kept on disk.

Reading a 4 GB torch pickle and transposing every Linear weight takes far longer than memory-mapping a file that
already holds the Paddle names and layouts. The first start converts (validating every key and shape) and writes
`weights.safetensors` into a folder keyed by the checkpoint files' names, sizes and modification times; later
starts read it tensor by tensor. For a network that holds float32 weights, bf16 weights are widened once, at
conversion (exact), so later starts only copy; for one that keeps bf16 (on the GPU, or the CPU's bf16 weights)
they stay bf16, half the size. Either way the cache is lossless.

With JANUS_QUANTIZATION=int8 the language model's projections and the generation head are quantized while
converting (`Int8Plan`: int8 values and a float32 scale per output column for each group of weight rows, a few
groups at a time) and the cache holds them so; its metadata names the quantization, and a cache whose metadata,
names, shapes or dtypes differ from what the network expects is refused and rebuilt.

Conversion streams: each tensor is read, checked, laid out and appended to the cache file before the next is
read, so the first start holds no more than one weight file's tensors in memory (the torch reader loads a whole
`.bin` shard; safetensors are read tensor by tensor), and the network is then filled from the cache.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.checkpoint import keys, safetensors_io, sources
from model.checkpoint.errors import CheckpointError
from model.cpu_kernels import int8

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
Native = dict[str, tuple[np.ndarray, str]]  # paddle name -> (array in paddle layout, safetensors dtype code)


@dataclass(frozen=True, slots=True)
class Int8Plan:
    """Which weights are quantized to int8 while converting, and their group size."""

    names: frozenset[str]
    group: int = int8.GROUP_SIZE

    @property
    def tag(self) -> str:
        return f"int8-g{self.group}-pairs"  # the rows' order (int8.pair_rows) is part of the format

    def expected(self, shapes: dict[str, list[int]]) -> dict[str, list[int]]:
        """The cache's tensors: the network's, plus each quantized weight's scales."""
        out = dict(shapes)
        for name in self.names:
            K, N = shapes[name]
            out[keys.scale_name(name)] = [int8.scale_rows(K, self.group), N]
        return out

    def dtype_codes(self) -> dict[str, str]:
        return {**{name: "I8" for name in self.names}, **{keys.scale_name(name): "F32" for name in self.names}}


class CachedWeights:
    """The converted cache file, read lazily (one tensor at a time)."""

    def __init__(self, path: Path) -> None:
        self.file = safetensors_io.SafetensorsFile(path)

    def shapes(self) -> dict[str, list[int]]:
        return self.file.shapes()

    def __getitem__(self, name: str) -> tuple[np.ndarray, str]:
        return self.file.read(name)

    def dtype_code(self, name: str) -> str:
        return self.file.header[name]["dtype"]

    def metadata(self) -> dict[str, str]:
        return safetensors_io.read_metadata(self.file.path)

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Read a tensor straight into `out` (e.g. a view of a parameter's memory): no second copy in memory."""
        self.file.read_into(name, out)


def cache_key(directory: Path, files: list[Path], widen_bf16: bool, quantization: str = "none") -> str:
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    key: list[object] = [FORMAT_VERSION, str(directory.resolve()), stats, widen_bf16]
    if quantization != "none":  # unquantized caches keep the keys they had
        key.append(quantization)
    blob = json.dumps(key)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """bf16 bits (uint16) -> float32. bf16 is the top half of a float32, so this is exact."""
    out = np.empty(bits.shape, np.uint32)
    np.left_shift(bits, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def convert(files: list[Path], expected: dict[str, list[int]], transposed: set[str], widen: bool = False,
            quantized: Int8Plan | None = None) -> Native:
    """Read every weight file, keep what the network uses, in its layout; fail on anything that does not fit."""
    return {name: (arr, code) for name, arr, code in iter_converted(files, expected, transposed, widen, quantized)}


def iter_converted(files: list[Path], expected: dict[str, list[int]], transposed: set[str], widen: bool = False,
                   quantized: Int8Plan | None = None) -> Iterator[tuple[str, np.ndarray, str]]:
    """(paddle name, array in paddle layout, dtype code) for every weight the network uses, one at a time; fails
    (after the last file) when any is missing. `quantized` weights come as int8 followed by their scales."""
    origin: dict[str, Path] = {}
    for path in files:
        for key, arr, is_bf16 in sources.iter_tensors(path):
            if keys.is_unused(key):
                continue
            name = keys.to_paddle_name(key)
            if name not in expected:
                raise CheckpointError(f"{path.name}: unexpected key {key!r} (shape {list(arr.shape)}): "
                                      "the network has no such parameter")
            if name in origin:
                raise CheckpointError(f"key {key!r} appears twice: in {origin[name].name} and {path.name}")
            if name in transposed and arr.ndim == 2:
                arr = arr.T
            if list(arr.shape) != expected[name]:
                found = list(arr.shape[::-1]) if name in transposed else list(arr.shape)
                want = expected[name][::-1] if name in transposed else expected[name]
                raise CheckpointError(f"{path.name}: key {key!r} has shape {found}, expected {want}")
            origin[name] = path
            if quantized is not None and name in quantized.names:
                q, scales = int8.quantize(arr, quantized.group)  # bf16 arrives as uint16 bits, read as such
                yield name, int8.pair_rows(q), "I8"
                yield keys.scale_name(name), scales, "F32"
            elif is_bf16 and widen:
                yield name, widen_bf16(np.ascontiguousarray(arr)), "F32"
            else:
                yield name, np.ascontiguousarray(arr), "BF16" if is_bf16 else safetensors_io.dtype_code(arr)
            del arr
    missing = sorted(set(expected) - set(origin))
    if missing:
        shown = ", ".join(repr(keys.to_checkpoint_name(m)) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"missing key(s) {shown}{more} in {', '.join(f.name for f in files)}")


def load_native(directory: Path, expected: dict[str, list[int]], transposed: set[str], cache_dir: Path | None,
                widen: bool = False, quantized: Int8Plan | None = None) -> tuple[Native | CachedWeights, str]:
    """The network's weights from the cache when it is current, else converted (and cached when possible).

    `widen`: store bf16 as float32 (for a float32 network). `quantized`: the weights to hold as int8 (with their
    scales beside them). Returns the weights (indexable by parameter name, scales included) and how they were
    obtained: "cache", "converted" or "converted (not cached)".
    """
    files = sources.weight_files(directory)
    tag = quantized.tag if quantized else "none"
    target = cache_dir / cache_key(directory, files, widen, tag) / "weights.safetensors" if cache_dir else None
    if target is not None and target.exists():
        try:
            cached = CachedWeights(target)
            mismatch = _mismatch(cached, expected, quantized)
            if mismatch is None:
                return cached, "cache"
            log.warning("converted-weights cache %s does not match the network (%s); converting again", target,
                        mismatch)
        except CheckpointError as err:
            log.warning("ignoring unreadable converted-weights cache: %s", err)
    if target is None:
        return convert(files, expected, transposed, widen, quantized), "converted (not cached)"
    try:
        _convert_into(target, files, expected, transposed, widen, directory, quantized)
    except OSError as err:
        log.warning("could not cache converted weights in %s: %s", target.parent, err)
        return convert(files, expected, transposed, widen, quantized), "converted (not cached)"
    return CachedWeights(target), "converted"


def _mismatch(cached: CachedWeights, expected: dict[str, list[int]], quantized: Int8Plan | None) -> str | None:
    """Why a cache file cannot serve this network (None: it can): other tensors or shapes, another quantization,
    or tensors of other dtypes than the quantization makes."""
    if cached.shapes() != (quantized.expected(expected) if quantized else expected):
        return "other tensors or shapes"
    found = cached.metadata().get("quantization", "none")
    if found != (quantized.tag if quantized else "none"):
        return f"quantization {found}"
    for name, code in (quantized.dtype_codes() if quantized else {}).items():
        if cached.dtype_code(name) != code:
            return f"{name} is {cached.dtype_code(name)}, not {code}"
    return None


def _convert_into(target: Path, files: list[Path], expected: dict[str, list[int]], transposed: set[str], widen: bool,
                  source: Path, quantized: Int8Plan | None = None) -> None:
    """Stream the conversion into the cache file, written under a temporary name and renamed when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    names = sorted(quantized.expected(expected) if quantized else expected)
    metadata = {"source": str(source.resolve())}
    if quantized:
        metadata["quantization"] = quantized.tag
    try:
        writer = safetensors_io.StreamingWriter(Path(tmp), names, metadata)
        try:
            for name, arr, code in iter_converted(files, expected, transposed, widen, quantized):
                writer.add(name, arr, code)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        os.replace(tmp, target)
        _return_freed_memory()
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _return_freed_memory() -> None:
    """Hand the conversion's freed buffers back to the system before the network is filled from the cache: glibc
    keeps freed blocks under 32 MB for reuse, and the network's tensors would otherwise come on top of them."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to do
        ctypes.CDLL("libc.so.6").malloc_trim(0)

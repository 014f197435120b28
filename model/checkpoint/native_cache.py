"""One-time conversion of a published checkpoint into the network's own layout, kept on disk.

Reading a 4 GB torch pickle and transposing every Linear weight takes far longer than memory-mapping a file that
already holds the Paddle names and layouts. The first start converts (validating every key and shape) and writes
`weights.safetensors` into a folder keyed by the checkpoint files' names, sizes and modification times; later
starts read it tensor by tensor. For a network that holds float32 weights, bf16 weights are widened once, at
conversion (exact), so later starts only copy; for one that keeps bf16 (on the GPU, or the CPU's bf16 weights)
they stay bf16, half the size. Either way the cache is lossless.

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
from pathlib import Path

import numpy as np

from model.checkpoint import keys, safetensors_io, sources
from model.checkpoint.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT_VERSION = 2
Native = dict[str, tuple[np.ndarray, str]]  # paddle name -> (array in paddle layout, safetensors dtype code)


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

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Read a tensor straight into `out` (e.g. a view of a parameter's memory): no second copy in memory."""
        self.file.read_into(name, out)


def cache_key(directory: Path, files: list[Path], widen_bf16: bool) -> str:
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    blob = json.dumps([FORMAT_VERSION, str(directory.resolve()), stats, widen_bf16])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def widen_bf16(bits: np.ndarray) -> np.ndarray:
    """bf16 bits (uint16) -> float32. bf16 is the top half of a float32, so this is exact."""
    out = np.empty(bits.shape, np.uint32)
    np.left_shift(bits, 16, out=out, dtype=np.uint32)
    return out.view(np.float32)


def convert(files: list[Path], expected: dict[str, list[int]], transposed: set[str], widen: bool = False) -> Native:
    """Read every weight file, keep what the network uses, in its layout; fail on anything that does not fit."""
    return {name: (arr, code) for name, arr, code in iter_converted(files, expected, transposed, widen)}


def iter_converted(files: list[Path], expected: dict[str, list[int]], transposed: set[str],
                   widen: bool = False) -> Iterator[tuple[str, np.ndarray, str]]:
    """(paddle name, array in paddle layout, dtype code) for every weight the network uses, one at a time; fails
    (after the last file) when any is missing."""
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
            if is_bf16 and widen:
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
                widen: bool = False) -> tuple[Native | CachedWeights, str]:
    """The network's weights from the cache when it is current, else converted (and cached when possible).

    `widen`: store bf16 as float32 (for a float32 network). Returns the weights (indexable by parameter name) and
    how they were obtained: "cache", "converted" or "converted (not cached)".
    """
    files = sources.weight_files(directory)
    target = cache_dir / cache_key(directory, files, widen) / "weights.safetensors" if cache_dir else None
    if target is not None and target.exists():
        try:
            cached = CachedWeights(target)
            if cached.shapes() == expected:
                return cached, "cache"
            log.warning("converted-weights cache %s does not match the network; converting again", target)
        except CheckpointError as err:
            log.warning("ignoring unreadable converted-weights cache: %s", err)
    if target is None:
        return convert(files, expected, transposed, widen), "converted (not cached)"
    try:
        _convert_into(target, files, expected, transposed, widen, directory)
    except OSError as err:
        log.warning("could not cache converted weights in %s: %s", target.parent, err)
        return convert(files, expected, transposed, widen), "converted (not cached)"
    return CachedWeights(target), "converted"


def _convert_into(target: Path, files: list[Path], expected: dict[str, list[int]], transposed: set[str], widen: bool,
                  source: Path) -> None:
    """Stream the conversion into the cache file, written under a temporary name and renamed when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    os.close(fd)
    try:
        writer = safetensors_io.StreamingWriter(Path(tmp), sorted(expected), {"source": str(source.resolve())})
        try:
            for name, arr, code in iter_converted(files, expected, transposed, widen):
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

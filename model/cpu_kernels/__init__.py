"""Fused float32 CPU kernels (attention, RMSNorm, rotary embedding, SwiGLU, few-row projections, and the VQ
decoder's convolutions and GroupNorm), compiled from C on first use and cached.

The library is built with the machine's C compiler for the machine's own CPU (`-march=native`) into
`$JANUS_CACHE_DIR/cpu-kernels/<key>/`, where the key covers the source, the flags, the compiler and the CPU's
feature flags: a cache shared between different machines never hands one a library built for another. Building
takes about a second; later starts only load it.

Threads come from OpenMP, linked against the runtime Paddle's MKL uses (Intel's libiomp5, shipped inside the
paddle wheel) when it is there: two OpenMP runtimes in one process each keep their worker threads spinning after a
parallel region, and on a small machine they then fight over the cores (measured: the kernels ran slower than
Paddle's unfused ops that way). GCC's libgomp is the fallback. When the wheel also ships MKL itself
(libmklml_intel), prompt attention runs its two matrix products per block through MKL's sgemm (1.3-1.5x faster
than the kernels' own register-tiled loops, which are the fallback).

`JANUS_CPU_KERNELS` chooses: `auto` (default: use them when they build, else Paddle's own ops, with a warning),
`off` (always Paddle's ops), `require` (fail when they cannot be built: tests and benchmarks use this).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import paddle

from model.runtime_env import cache_root

log = logging.getLogger(__name__)

SOURCES = [Path(__file__).with_name(name)
           for name in ("attention.c", "layer_ops.c", "linear.c", "linear_blocked.c", "conv.c", "int8_rows.c",
                        "int8_blocked.c")]
HEADERS = [Path(__file__).with_name(name) for name in ("vec.h", "scratch.h", "ahead.h", "int8_pairs.h")]
LINEAR_MAX_ROWS = 4  # rows up to which janus_linear_rows beats MKL (measured on Janus-Pro-1B)
MODES = ("auto", "off", "require")
_COMPILE_FLAGS = ["-O3", "-fno-math-errno", "-ffp-contract=fast", "-fopenmp", "-fPIC", "-std=gnu11"]

_P, _I, _L, _F = ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_float
_SIGNATURES = {
    "janus_prompt_attention": [_P, _P, _P, _P, _I, _I, _I, _I, _I, _L, _L, _L, _L, _P, _I, _F],
    "janus_paged_prompt_attention": [_P, _P, _P, _P, _I, _I, _I, _I, _I, _L, _L, _I, _P, _L, _P, _P, _F],
    "janus_paged_decode_attention": [_P, _P, _P, _P, _I, _I, _I, _I, _I, _P, _L, _P, _F],
    "janus_paged_window_attention": [_P, _P, _P, _P, _I, _I, _I, _I, _I, _L, _L, _I, _P, _L, _P, _P, _F],
    "janus_rms_norm": [_P, _P, _P, _L, _I, _F],
    "janus_add_rms_norm": [_P, _P, _P, _P, _P, _L, _I, _F],
    "janus_rope": [_P, _P, _P, _P, _L, _I, _I],
    "janus_add_bias": [_P, _P, _L, _I],
    "janus_swiglu": [_P, _P, _P, _L],
    "janus_linear_rows": [_P, _P, _P, _P, _I, _I, _I],
    "janus_linear_rows_bf16": [_P, _P, _P, _P, _I, _I, _I],
    "janus_linear_bf16": [_P, _P, _P, _P, _I, _I, _I],
    "janus_linear_blocked_bf16": [_P, _P, _P, _P, _I, _I, _I],
    "janus_embedding_bf16": [_P, _P, _P, _L, _I],
    "janus_gelu": [_P, _P, _L],
    "janus_patchify": [_P, _P, _I, _I, _I, _I],
    "janus_pack_conv_weight": [_P, _P, _I, _I, _I],
    "janus_conv2d_nhwc": [_P, _P, _P, _P, _P, _I, _I, _I, _I, _I, _I, _I],
    "janus_group_norm_nhwc": [_P, _P, _P, _P, _I, _L, _I, _I, _F, _I],
    # int8 weights with a scale per group of weight rows (model.cpu_kernels.int8)
    **{name: [_P, _P, _P, _I, _P, _P, _I, _I, _I]
       for name in ("janus_linear_rows_int8", "janus_linear_blocked_int8", "janus_linear_int8")},
    "janus_int8_rows_activation_bits": [],
}
# 0: no memory for the kernel's buffers (the output is untouched, or for the few-row kernels' passes of 8 rows,
# written only for the passes before)
_RETURNS = {"janus_linear_rows": _I, "janus_linear_rows_bf16": _I, "janus_linear_bf16": _I,
            "janus_linear_blocked_bf16": _I, "janus_linear_rows_int8": _I, "janus_linear_blocked_int8": _I,
            "janus_linear_int8": _I, "janus_int8_rows_activation_bits": _I}


class KernelBuildError(RuntimeError):
    """The C kernels could not be compiled or loaded."""


# Every kernel call asks for the mode and checks its tensors: a Janus-Pro-1B decode step makes some 300 calls, so
# these few microseconds each add up. The mode is read from the environment each time (tests change it) but parsed
# once per value.
_modes_of: dict[str | None, str] = {}


def mode() -> str:
    raw = os.environ.get("JANUS_CPU_KERNELS")
    value = _modes_of.get(raw)
    if value is None:
        value = ("auto" if raw is None else raw).strip().lower()
        if value not in MODES:
            raise ValueError(f"JANUS_CPU_KERNELS must be one of {', '.join(MODES)}, got {value!r}")
        _modes_of[raw] = value
    return value


def is_dtype(tensor: paddle.Tensor, dtype: paddle.dtype) -> bool:
    """tensor.dtype == dtype, asking by identity first (Paddle's dtypes are singletons: 0.1 against 0.7
    microseconds; the comparison stays for a build where they are not)."""
    own = tensor.dtype
    return own is dtype or own == dtype


_CPU = paddle.CPUPlace()
_new_tensor = getattr(getattr(paddle, "_C_ops", None), "empty", None)


def empty_float32(shape: list[int] | tuple[int, ...]) -> paddle.Tensor:
    """An uninitialised float32 tensor on the CPU, for a kernel's output: what `paddle.empty` makes, without its
    Python argument handling (1.5 against 4.3 microseconds a call)."""
    if _new_tensor is not None:
        return _new_tensor(list(shape), paddle.float32, _CPU)
    return paddle.empty(list(shape), "float32")


_lock = threading.Lock()
_loaded: dict[str, ctypes.CDLL | None] = {}


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None when they are switched off or (in `auto` mode) cannot be built."""
    wanted = mode()
    if wanted == "off":
        return None
    lib = _loaded.get("lib")
    if lib is not None:  # every kernel call comes through here: no lock once loaded
        return lib
    with _lock:
        if "lib" not in _loaded:
            try:
                _loaded["lib"] = _load(build())
                log.info("fused CPU kernels loaded")
            except KernelBuildError as err:
                if wanted == "require":
                    raise
                log.warning("fused CPU kernels unavailable, using Paddle's ops (slower on CPU): %s", err)
                _loaded["lib"] = None
        lib = _loaded["lib"]
    if lib is None and wanted == "require":
        raise KernelBuildError("JANUS_CPU_KERNELS=require but the kernels failed to build earlier in this process")
    return lib


def for_tensors(*tensors: paddle.Tensor, strided: bool = False) -> ctypes.CDLL | None:
    """The kernels when every tensor suits them, else None: float32 on the CPU and contiguous (strided=True: only
    the last axis contiguous, for kernels that take the other strides as arguments)."""
    if not tensors[0].place.is_cpu_place():
        return None
    for tensor in tensors:
        if not is_dtype(tensor, paddle.float32):
            return None
        if not (tensor.strides[-1] == 1 if strided else tensor.is_contiguous()):
            return None
    return library()


def build(out_root: Path | None = None, use_mkl: bool = True, arch: list[str] | None = None) -> Path:
    """Compile the kernels (or find them already compiled) and return the shared library's path.

    use_mkl=False builds without MKL even where the paddle wheel has it (tests cover both variants). arch: target
    flags instead of the machine's own CPU (e.g. `["-march=x86-64-v3"]`, or `[]` for the compiler's default), so
    that tests also run the code paths of other instruction sets."""
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not compiler:
        raise KernelBuildError("no C compiler found (install gcc, or set CC)")
    source = b"".join(path.read_bytes() for path in SOURCES + HEADERS)
    defines, link = _paddle_runtime_flags(use_mkl)
    last_error = ""
    # some compilers (or CPUs) have no -march=native
    for target_flags in ([arch] if arch is not None else (["-march=native"], [])):
        flags = target_flags + _COMPILE_FLAGS + defines
        key = _cache_key(compiler, flags + link, source)
        target = (out_root or cache_root() / "cpu-kernels") / key / "libjanus_cpu_kernels.so"
        if target.exists():
            return target
        try:
            _compile(compiler, flags, link, target)
            return target
        except KernelBuildError as err:
            last_error = str(err)
    raise KernelBuildError(last_error)


def _paddle_runtime_flags(use_mkl: bool) -> tuple[list[str], list[str]]:
    """(defines, link flags): Paddle's own libiomp5 and MKL when the wheel ships them (see the module docstring),
    else libgomp and no MKL."""
    spec = importlib.util.find_spec("paddle")
    for location in (spec.submodule_search_locations or []) if spec else []:
        libs = Path(location) / "libs"
        if (libs / "libiomp5.so").exists():
            link = [f"-L{libs}", "-l:libiomp5.so", f"-Wl,-rpath,{libs}", "-Wl,--no-undefined", "-lm"]
            if use_mkl and (libs / "libmklml_intel.so").exists():
                return ["-DJANUS_WITH_MKL"], link + ["-l:libmklml_intel.so"]
            return [], link
    return [], ["-fopenmp", "-lm"]


def _compile(compiler: str, flags: list[str], link: list[str], target: Path) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise KernelBuildError(f"cannot create {target.parent}: {err}") from None
    # Built under temporary names and renamed: processes starting together never load a half-written file.
    fd, partial = tempfile.mkstemp(dir=target.parent, suffix=".so.partial")
    os.close(fd)
    objects = [f"{partial}.{source.stem}.o" for source in SOURCES]
    commands = [[compiler, *flags, "-c", str(source), "-o", obj] for source, obj in zip(SOURCES, objects, strict=True)]
    commands.append([compiler, "-shared", *objects, "-o", partial, *link])
    try:
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise KernelBuildError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise KernelBuildError(f"cannot run {compiler}: {err}") from None
    finally:
        for leftover in (partial, *objects):
            if os.path.exists(leftover):
                os.unlink(leftover)


def _load(path: Path) -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as err:
        raise KernelBuildError(f"cannot load {path}: {err}") from None
    for name, argtypes in _SIGNATURES.items():
        function = getattr(lib, name)
        function.argtypes = argtypes
        function.restype = _RETURNS.get(name)
    return lib


def _cache_key(compiler: str, flags: list[str], source: bytes) -> str:
    digest = hashlib.sha256(source)
    digest.update(" ".join(flags).encode())
    digest.update(_compiler_version(compiler).encode())
    digest.update(platform.machine().encode())
    digest.update(_cpu_features().encode())
    return digest.hexdigest()[:16]


def _compiler_version(compiler: str) -> str:
    try:
        return subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return compiler


def _cpu_features() -> str:
    """The CPU's feature flags (what -march=native compiles for)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()

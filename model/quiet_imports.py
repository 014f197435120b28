"""Silence the three alarming notices Paddle's import prints on every start, and nothing else.

- "No ccache found" (paddle.utils.cpp_extension, a UserWarning): about rebuilding Paddle's own C++ extensions,
  which the service never builds (its kernels are compiled and cached by `model.cpu_kernels`).
- "Setuptools is replacing distutils" (setuptools' import shim, a UserWarning), set off by that same module.
- "OMP_NUM_THREADS set to N, not 1 ... PLEASE USE OMP_NUM_THREADS WISELY" (printed on stderr by
  `paddle.base.__bootstrap__`): a caution for data-parallel training; here the thread count is set on purpose
  (`model.runtime_env`). Only these two lines are dropped, and only while `paddle` itself is being imported.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from collections.abc import Iterator, Sequence
from types import ModuleType
from typing import Any, TextIO

WARNINGS = ("No ccache found", "Setuptools is replacing distutils")
STDERR_LINES = ("WARNING: OMP_NUM_THREADS set to ", "PLEASE USE OMP_NUM_THREADS WISELY")


def quiet_paddle_import() -> None:
    for message in WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=UserWarning)
    if "paddle" not in sys.modules and not any(isinstance(f, _QuietPaddleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietPaddleFinder())


class _QuietPaddleFinder(importlib.abc.MetaPathFinder):
    """Finds `paddle` as usual, once, and wraps its loader so that its import runs with the filtered stderr."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "paddle":
            return None
        sys.meta_path.remove(self)  # before searching, so the search below does not come back here
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _FilteringLoader(spec.loader)
        return spec


class _FilteringLoader(importlib.abc.Loader):
    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._inner.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        with _stderr_without(STDERR_LINES):
            self._inner.exec_module(module)

    def __getattr__(self, name: str) -> Any:  # resource readers and the like: the real loader's
        return getattr(self._inner, name)


@contextlib.contextmanager
def _stderr_without(prefixes: Sequence[str]) -> Iterator[None]:
    target = sys.stderr
    filtered = _LineFilter(target, prefixes)
    with contextlib.redirect_stderr(filtered):  # type: ignore[type-var]
        try:
            yield
        finally:
            filtered.flush_partial()


class _LineFilter:
    """A write-only text stream passing on every line that starts with none of `prefixes`."""

    def __init__(self, target: TextIO, prefixes: Sequence[str]) -> None:
        self._target = target
        self._prefixes = tuple(prefixes)
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            if not line.startswith(self._prefixes):
                self._target.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def flush_partial(self) -> None:
        if self._pending and not self._pending.startswith(self._prefixes):
            self._target.write(self._pending)
        self._pending = ""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)

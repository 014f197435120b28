"""Fixtures of the model tests."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from model import cpu_kernels


@pytest.fixture(params=["default", "without-mkl"])
def kernel_build(request, monkeypatch, tmp_path_factory) -> str:
    """The C kernels come in two builds: calling MKL's sgemm (where the paddle wheel ships it) and with plain loops.
    A test taking this fixture runs against each; the value names the build."""
    if request.param == "without-mkl":
        path = cpu_kernels.build(tmp_path_factory.getbasetemp() / "kernels-without-mkl", use_mkl=False)
        monkeypatch.setattr(cpu_kernels, "_loaded", {"lib": cpu_kernels._load(path)})
    return request.param


@pytest.fixture
def resident_mib() -> Callable[[], float]:
    """A function reading this process's resident memory in MiB (from /proc: the test is skipped elsewhere)."""
    if not os.path.exists("/proc/self/statm"):
        pytest.skip("resident memory is read from /proc")

    def read() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    return read

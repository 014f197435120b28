"""Fixtures of the model tests."""

from __future__ import annotations

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

"""The kernel backends tests run over; the compiled kernels' cases are skipped, visibly, where inplace-abn (the
optional extra) cannot be imported, instead of failing or silently dropping out."""

import pytest

from iabn_zoo.layers import native_kernels

HAVE_NATIVE = native_kernels() is not None
needs_native = pytest.mark.skipif(not HAVE_NATIVE, reason="inplace-abn (the compiled kernels) is not importable")
BACKENDS = ["torch", pytest.param("native", marks=needs_native)]
AVAILABLE_BACKENDS = ["torch"] + (["native"] if HAVE_NATIVE else [])  # for loops inside one test or process


def backend_case(*values):
    """One parametrize case; skipped without inplace-abn when it runs the compiled kernels."""
    return pytest.param(*values, marks=needs_native) if "native" in values else values

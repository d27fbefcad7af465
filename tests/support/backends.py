"""The kernel backends tests run over; the compiled kernels' cases are skipped, visibly, where inplace-abn (the
optional extra) cannot be imported, instead of failing or silently dropping out."""

import pytest

from iabn_zoo.layers import native_kernels

needs_native = pytest.mark.skipif(native_kernels() is None, reason="inplace-abn (the compiled kernels) is not importable")
NATIVE = pytest.param("native", marks=needs_native)
BACKENDS = ["torch", NATIVE]

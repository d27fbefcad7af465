"""A classifier small enough to fine-tune many times in one test (about 20 thousand parameters, against resnet18's
11 million): the miniature Vistas body of `segmentation_fixtures` (the zoo's residual blocks and InPlace-ABN layers,
widths 8 to 32) with the zoo's pooled linear classifier, registered as the architecture `tiny_classifier` only while
`tiny_classifier_registered` is open."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from iabn_zoo.layers import make_norm_act
from iabn_zoo.models._registry import is_arch, register_arch, unregister_arch
from support.segmentation_fixtures import TinyBody


def tiny_classifier(bn_mode: str = "inplace", activation: str = "leaky_relu", activation_param: float = 0.01,
                    num_classes: int = 10, backend: str | None = None) -> TinyBody:
    """The tiny residual body with a classifier of `num_classes` outputs."""
    model = TinyBody(make_norm_act(bn_mode, activation, activation_param, backend=backend))
    model.make_classifier(num_classes)
    return model


@contextmanager
def tiny_classifier_registered() -> Iterator[None]:
    """`tiny_classifier` in the architecture registry for the duration of the block (nesting allowed)."""
    if is_arch(tiny_classifier.__name__):
        yield
        return
    register_arch(tiny_classifier)
    try:
        yield
    finally:
        unregister_arch(tiny_classifier.__name__)

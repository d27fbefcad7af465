"""Norm-act layers: BatchNorm + activation in standard, InPlace-ABN and synchronised form, the InPlace-ABN function
(over the `iabn_zoo` custom operators of `ops`) and its two kernel implementations chosen per call, exact mode
conversions, and memory-lean pooling. Knows no network.
May import: errors, system."""

from .activations import (ACTIVATIONS, DEFAULT_ACTIVATION_PARAMS, INVERTIBLE_ACTIVATIONS, activate, activate_,
                          check_activation)
from .conversion import convert_norm
from .kernels import BACKENDS, native_kernels, resolve_backend
from .norm_act import ABN, BN_MODES, InPlaceABN, InPlaceABNSync, NormActFactory, check_bn_mode, make_norm_act
from .pooling import LeanMaxPool2d, max_pool

__all__ = ["ABN", "ACTIVATIONS", "BACKENDS", "BN_MODES", "DEFAULT_ACTIVATION_PARAMS", "INVERTIBLE_ACTIVATIONS",
           "InPlaceABN", "InPlaceABNSync", "LeanMaxPool2d", "NormActFactory", "activate", "activate_",
           "check_activation", "check_bn_mode", "convert_norm", "make_norm_act", "max_pool", "native_kernels",
           "resolve_backend"]

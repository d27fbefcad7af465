"""DeepLabV3 head: authors' module names, output shapes, the global-pooling branch (whole-map mean in training,
clipped sliding window with replicate padding at inference) against a direct computation, and bad input.
The head's computations are judged against the direct ones in float64 (convolution and pooling: float64 PyTorch)."""

import pytest
import torch
import torch.nn.functional as F
from support.backends import BACKENDS
from support.numerics import PURE_FLOAT64_TOL, assert_differs, assert_same_function, float64_tol

from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.layers import make_norm_act
from iabn_zoo.models.deeplab import DeepLabV3Head, sliding_average

AUTHORS_KEYS = ["map_convs.0.weight", "map_convs.1.weight", "map_convs.2.weight", "map_convs.3.weight",
                "map_bn.weight", "global_pooling_conv.weight", "global_pooling_bn.weight", "red_conv.weight",
                "pool_red_conv.weight", "red_bn.weight"]


def make_head(pooling_size=None, bn_mode="inplace", backend=None, in_channels=12, out_channels=6, hidden=4):
    torch.manual_seed(0)
    return DeepLabV3Head(in_channels, out_channels, hidden, dilations=(1, 2, 3),
                         norm_act=make_norm_act(bn_mode, backend=backend), pooling_size=pooling_size)


def direct_window_average(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """A 2-D average over each clipped window, padded back as the authors' head does (odd: centred, even: one
    more row/column after)."""
    height, width = min(window[0], x.shape[2]), min(window[1], x.shape[3])
    pooled = F.avg_pool2d(x, (height, width), stride=1)
    pad_w = ((width - 1) // 2, (width - 1) // 2 + (0 if width % 2 else 1))
    pad_h = ((height - 1) // 2, (height - 1) // 2 + (0 if height % 2 else 1))
    return F.pad(pooled, pad_w + pad_h, mode="replicate")


def test_modules_carry_the_authors_names_and_shapes():
    head = DeepLabV3Head(4096, 256, 256, norm_act=make_norm_act("inplace"), pooling_size=84)
    state = head.state_dict()
    assert [key for key in state if key.endswith(".weight")] == AUTHORS_KEYS
    assert state["map_convs.1.weight"].shape == (256, 4096, 3, 3) and head.map_convs[3].dilation == (36, 36)
    assert state["map_bn.weight"].shape == (1024,) and state["red_conv.weight"].shape == (256, 1024, 1, 1)
    assert head.pooling_size == (84, 84)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bn_mode", ["standard", "inplace"])
def test_output_shape_and_backward_in_train_and_eval(bn_mode, backend):
    head = make_head(pooling_size=(3, 4), bn_mode=bn_mode, backend=backend)
    for training in (True, False):
        head.train(training)
        head.zero_grad()
        x = torch.randn(2, 12, 9, 7, requires_grad=True)
        out = head(x)
        assert out.shape == (2, 6, 9, 7) and torch.isfinite(out).all()
        out.square().mean().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
        assert head.global_pooling_conv.weight.grad.abs().sum() > 0, "the pooling branch takes part"


@pytest.mark.parametrize("window", [(5, 4), (4, 5), (3, 3), (6, 2)])
def test_inference_pooling_equals_the_direct_window_average(window):
    head = make_head(pooling_size=window).eval().double()
    x = torch.randn(2, 12, 13, 11).double()
    with torch.no_grad():
        ours = head.pooled_context(x)
        expected = head.global_pooling_conv(direct_window_average(x, window))
    assert ours.shape == (2, 4, 13, 11)
    assert_same_function(ours, expected, "pooled context", PURE_FLOAT64_TOL)
    assert_differs(ours[:, :, 0, 0], ours[:, :, 6, 5], 1e-3, "a large map's context at two pixels")


def test_sliding_average_matches_direct_average_on_large_windows():
    x = torch.rand(1, 3, 40, 30, dtype=torch.float64) * 10
    assert_same_function(sliding_average(x, (21, 8)), direct_window_average(x, (21, 8)), "sliding average",
                         PURE_FLOAT64_TOL)


def test_window_larger_than_the_map_is_the_global_mean():
    head = make_head(pooling_size=84).eval().double()
    x = torch.randn(2, 12, 5, 7).double()
    with torch.no_grad():
        ours = head.pooled_context(x)
        expected = head.global_pooling_conv(x.mean(dim=(2, 3), keepdim=True)).expand_as(ours)
        assert_same_function(ours, expected, "pooled context", PURE_FLOAT64_TOL)
        unset = make_head(pooling_size=None).eval().double()
        assert_same_function(head(x.clone()), unset(x.clone()), "head output", float64_tol(head))


def test_training_and_no_pooling_size_use_the_whole_map_mean():
    x = torch.randn(2, 12, 13, 11).double()
    expected_input = x.mean(dim=(2, 3), keepdim=True)
    for head in (make_head(pooling_size=3).train().double(), make_head(pooling_size=None).eval().double()):
        with torch.no_grad():
            ours = head.pooled_context(x)
            assert_same_function(ours, head.global_pooling_conv(expected_input), "pooled context", PURE_FLOAT64_TOL)
        assert ours.shape == (2, 4, 1, 1)


def test_head_output_is_red_bn_of_the_branch_sum():
    """Wiring: map branch and pooling branch are summed before `red_bn` (standard layers, out of place)."""
    head = make_head(pooling_size=(4, 3), bn_mode="standard").eval().double()
    x = torch.randn(1, 12, 10, 9).double()
    with torch.no_grad():
        branches = head.red_conv(head.map_bn(torch.cat([conv(x) for conv in head.map_convs], dim=1)))
        context = head.pool_red_conv(head.global_pooling_bn(head.global_pooling_conv(direct_window_average(x, (4, 3)))))
        assert_same_function(head(x), head.red_bn(branches + context), "head output", PURE_FLOAT64_TOL)
        varying = head(x)
        head.set_pooling_size(None)
        assert_differs(head(x), varying, 1e-4, "inference outputs with and without a pooling size")


@pytest.mark.parametrize("pooling_size", [0, -3, (84,), (0, 5), (2.5, 3), True, "84"])
def test_bad_pooling_size_is_refused(pooling_size):
    with pytest.raises(InvalidArgumentError, match="pooling_size must be a positive int"):
        make_head(pooling_size=pooling_size)
    head = make_head(pooling_size=5)
    with pytest.raises(InvalidArgumentError, match="pooling_size"):
        head.set_pooling_size(pooling_size)
    assert head.pooling_size == (5, 5), "a refused value leaves the head as it was"


def test_wrong_channels_and_bad_construction_are_refused():
    head = make_head()
    with pytest.raises(InvalidArgumentError, match=r"expects features of shape \(N, 12, H, W\)"):
        head(torch.randn(1, 8, 5, 5))
    with pytest.raises(InvalidArgumentError, match="dilations must be three ints"):
        DeepLabV3Head(12, 6, 4, dilations=(6, 12), norm_act=make_norm_act("inplace"))
    with pytest.raises(InvalidArgumentError, match="out_channels must be a positive integer"):
        DeepLabV3Head(12, 0, 4, norm_act=make_norm_act("inplace"))

"""Memory tricks and their measurement: exactness of each trick against the plain formulation (in float64), bytes
kept for backward (on small inputs), and the `iabn-zoo memory` command."""

import argparse
import copy
import json

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st
from support.backends import BACKENDS
from support.numerics import PURE_FLOAT64_TOL, assert_same_function, assert_same_step, float64_tol

from iabn_zoo.cli import memory as memory_command
from iabn_zoo.cli.exit_codes import exit_code
from iabn_zoo.errors import InvalidArgumentError, UnknownNameError
from iabn_zoo.factory import create_model
from iabn_zoo.layers import ABN, convert_norm, make_norm_act
from iabn_zoo.layers.pooling import LeanMaxPool2d
from iabn_zoo.models._blocks import IdentityResidualBlock, ResidualBlock
from iabn_zoo.train.memory import SavedTensorLedger, compare_modes, measure_step, report_rows


def grads_of(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor | None = None):
    """Output, input gradient and parameter gradients of one forward/backward on a copy of `x`."""
    x = x.detach().clone().requires_grad_()
    out = module(x * 1.0)  # a non-leaf input, which in-place layers may overwrite
    if grad_out is None:  # random: a constant gradient would vanish through batch norm
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    out.backward(grad_out)
    return out.detach(), x.grad, {name: p.grad.clone() for name, p in module.named_parameters()}


# --- lean max pooling -------------------------------------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(kernel=st.integers(1, 5), stride=st.integers(1, 3), height=st.integers(5, 13), width=st.integers(5, 13),
       data=st.data())
def test_lean_max_pool_matches_max_pool_outputs_and_gradients(kernel, stride, height, width, data):
    padding = data.draw(st.integers(0, kernel // 2))
    generator = torch.Generator().manual_seed(kernel * 100 + stride * 10 + height)
    # Integer-valued inputs make ties common: the gradient must go where nn.MaxPool2d sends it.
    x = torch.randint(-3, 4, (2, 3, height, width), generator=generator).double()
    grad = torch.randn(2, 3, (height + 2 * padding - kernel) // stride + 1,
                       (width + 2 * padding - kernel) // stride + 1, generator=generator, dtype=torch.float64)
    lean = grads_of(LeanMaxPool2d(kernel, stride, padding), x, grad)
    plain = grads_of(nn.MaxPool2d(kernel, stride, padding), x, grad)
    assert_same_step(lean, plain, PURE_FLOAT64_TOL)


def test_lean_max_pool_keeps_one_byte_per_output_and_not_its_input():
    x = torch.randn(2, 8, 32, 32, requires_grad=True) * 1.0
    with SavedTensorLedger([]).recording() as lean:
        out = LeanMaxPool2d(3, 2, 1)(x)
    with SavedTensorLedger([]).recording() as plain:
        nn.MaxPool2d(3, 2, 1)(x)
    assert lean.saved_bytes == out.numel()  # int8 positions only
    assert plain.saved_bytes == x.numel() * 4 + out.numel() * 8  # float input + int64 indices


def test_lean_max_pool_output_may_be_overwritten_in_place():
    """The next in-place norm-act writes over the pooled tensor; backward must not need it."""
    x = torch.randn(2, 4, 9, 9).double()
    norm = make_norm_act("inplace")(4).double()
    lean = grads_of(nn.Sequential(LeanMaxPool2d(3, 2, 1), norm), x)
    plain = grads_of(nn.Sequential(nn.MaxPool2d(3, 2, 1), convert_norm(copy.deepcopy(norm), "standard")), x)
    assert_same_step(lean, plain, float64_tol(norm))


@pytest.mark.parametrize("options", [dict(kernel_size=12, stride=2), dict(kernel_size=3, stride=0),
                                     dict(kernel_size=3, stride=2, padding=2)])
def test_lean_max_pool_rejects_geometries_it_cannot_encode(options):
    with pytest.raises(InvalidArgumentError, match="kernel|padding|stride"):
        LeanMaxPool2d(**options)


def test_lean_max_pool_rejects_non_image_tensors():
    with pytest.raises(InvalidArgumentError, match=r"\(N, C, H, W\)"):
        LeanMaxPool2d(3, 2, 1)(torch.randn(4, 9, 9))


# --- fused residual (ResNet v1) and identity-mapping blocks -------------------------------------------------------

def paired_blocks(bn_mode: str, backend: str, channels, stride: int, in_channels: int):
    """The v1 block in its fused and plain formulations, with the same weights."""
    norm_act = make_norm_act(bn_mode, backend=backend)
    torch.manual_seed(0)
    fused = ResidualBlock(in_channels, channels, norm_act, activation="leaky_relu", activation_param=0.01,
                          stride=stride, fuse_residual=True)
    plain = ResidualBlock(in_channels, channels, norm_act, activation="leaky_relu", activation_param=0.01,
                          stride=stride, fuse_residual=False)
    with torch.no_grad():  # non-trivial affine parameters, negative weights included
        for p in fused.parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p))
    plain.load_state_dict(fused.state_dict())
    return fused, plain


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("channels,stride,in_channels", [((8, 8, 16), 1, 16), ((8, 8, 16), 2, 8), ((8, 8), 1, 8)])
def test_fused_residual_block_computes_the_plain_block(backend, training, channels, stride, in_channels):
    fused, plain = paired_blocks("inplace", backend, channels, stride, in_channels)
    fused.double().train(training)
    plain.double().train(training)
    x = torch.randn(3, in_channels, 10, 10).double()
    assert_same_step(grads_of(fused, x), grads_of(plain, x), float64_tol(fused))
    assert_same_function(fused.convs[-1].running_var, plain.convs[-1].running_var, "running_var", float64_tol(fused))


def large_storages(ledger: SavedTensorLedger, threshold: int) -> set[int]:
    return {pointer for (_, pointer), nbytes in ledger._storages.items() if nbytes > threshold}


def norm_output_storages(module: nn.Module) -> tuple[set[int], list]:
    """Record the storage of every norm-act output during the next forward."""
    storages: set[int] = set()
    handles = [m.register_forward_hook(lambda _m, _i, out: storages.add(out.untyped_storage().data_ptr()))
               for m in module.modules() if isinstance(m, ABN)]
    return storages, handles


@pytest.mark.parametrize("in_channels,stride", [(32, 1), (16, 2)])
def test_identity_block_keeps_nothing_but_its_inplace_outputs(in_channels, stride):
    """Beyond per-channel statistics, the only storages kept are the in-place norm-act outputs."""
    block = IdentityResidualBlock(in_channels, (8, 8, 32), make_norm_act("inplace"), stride=stride, groups=4)
    storages, _ = norm_output_storages(block)
    x = torch.randn(2, in_channels, 12, 12, requires_grad=True) * 1.0
    with SavedTensorLedger(list(block.parameters())).recording() as ledger:
        block(x)
    assert large_storages(ledger, threshold=4 * 32) == storages
    assert len(storages) == 3


@pytest.mark.parametrize("in_channels", [16, 8])
def test_identity_block_inplace_equals_standard(in_channels):
    """The in-place block (which copies its shortcut before bn1 overwrites it) computes the standard block."""
    torch.manual_seed(1)
    inplace = IdentityResidualBlock(in_channels, (8, 8, 16), make_norm_act("inplace"), groups=2).double()
    standard = convert_norm(copy.deepcopy(inplace), "standard")
    x = torch.randn(2, in_channels, 8, 8).double()
    assert_same_step(grads_of(inplace, x), grads_of(standard, x), float64_tol(inplace))


# --- whole networks -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch,target", [("resnext101", 0.49), ("wider_resnet38", 0.42), ("resnet50", 0.55)])
def test_inplace_network_keeps_at_most_the_target_fraction(arch, target):
    """The issue's ratios, on a small input (batch 2, 64 px); benchmarks report them at batch 4, 224 px."""
    standard, inplace = compare_modes(arch, batch=2, size=64)
    assert (standard.bn_mode, inplace.bn_mode) == ("standard", "inplace")
    assert inplace.saved_bytes / standard.saved_bytes <= target


@pytest.mark.parametrize("arch", ["resnet18", "wider_resnet16"])
def test_memory_tricks_reduce_what_inplace_networks_keep(arch):
    """Fused residual (v1) and lean pooling each cut memory below the in-place network without them."""
    x = torch.randn(2, 3, 32, 32)
    saved = {}
    for memory_efficient in (False, True):
        torch.manual_seed(0)
        model = create_model(arch, bn_mode="inplace", memory_efficient=memory_efficient)
        saved[memory_efficient] = measure_step(model, x).saved_bytes
    assert saved[True] < saved[False]


@pytest.mark.parametrize("arch,size", [("resnet18", 48), ("resnext50", 48)])
def test_memory_efficient_networks_compute_the_plain_networks(arch, size):
    """In float64: float32 training-mode gradients of a deep net on a tiny batch are dominated by rounding."""
    torch.manual_seed(0)
    lean = create_model(arch, bn_mode="inplace", memory_efficient=True, num_classes=5).double()
    plain = create_model(arch, bn_mode="inplace", memory_efficient=False, num_classes=5).double()
    plain.load_state_dict(lean.state_dict())
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    assert_same_step(grads_of(lean, x), grads_of(plain, x), float64_tol(lean, plain))


def test_report_rows_give_ratios_to_standard():
    rows = report_rows(compare_modes("resnet18", batch=2, size=32))
    assert [row["bn_mode"] for row in rows] == ["standard", "inplace"]
    assert rows[0]["saved_ratio"] == 1.0
    assert 0 < rows[1]["saved_ratio"] < 1
    assert rows[1]["saved_mib"] * 2 ** 20 == rows[1]["saved_bytes"]
    assert rows[0]["peak_mib"] is None and rows[1]["peak_ratio"] is None  # no allocator statistics on the CPU


@pytest.mark.parametrize("batch,size", [(1, 64), (2, 16)])
def test_compare_modes_rejects_sizes_it_cannot_train(batch, size):
    with pytest.raises(InvalidArgumentError, match="batch|size"):
        compare_modes("resnet18", batch=batch, size=size)


def test_compare_modes_unknown_architecture_suggests_names():
    with pytest.raises(UnknownNameError) as error:
        compare_modes("resnet5O", batch=2, size=32)
    assert "resnet50" in error.value.suggestions


# --- command line ---------------------------------------------------------------------------------------------

def memory_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iabn-zoo")
    memory_command.register(parser.add_subparsers(dest="command", required=True))
    return parser


def test_memory_command_prints_json_rows(capsys):
    args = memory_parser().parse_args(["memory", "resnet18", "--batch", "2", "--size", "32", "--json"])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["arch"], report["batch"], report["size"]) == ("resnet18", 2, 32)
    modes = {row["bn_mode"]: row for row in report["modes"]}
    assert modes["inplace"]["saved_bytes"] < modes["standard"]["saved_bytes"]
    assert modes["inplace"]["step_seconds"] > 0


def test_memory_command_prints_a_table(capsys):
    args = memory_parser().parse_args(["memory", "resnet18", "--batch", "2", "--size", "32"])
    assert args.func(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["bn_mode", "saved_mib", "saved_ratio"]
    assert [line.split()[0] for line in lines[2:]] == ["standard", "inplace"]


def test_memory_command_bad_batch_exits_with_usage_code(capsys):
    from iabn_zoo.cli.main import main

    assert main(["memory", "resnet18", "--batch", "1", "--size", "32"]) == exit_code(InvalidArgumentError)
    assert "--batch-size must be" in capsys.readouterr().err  # the alias --batch is spelt as the option's name

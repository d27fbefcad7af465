"""Synchronised InPlace-ABN on two real gloo processes with batch sizes 3 and 5 versus one process on the batch of 8."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from support.backends import AVAILABLE_BACKENDS, BACKENDS
from support.numerics import PURE_FLOAT64_TOL, assert_differs, assert_same_function

from iabn_zoo.layers import InPlaceABN, InPlaceABNSync

SPLIT = (3, 5)
# name: (input shape for the whole batch, activation, activation_param, fused residual)
CASES = {
    "4d_leaky": ((8, 4, 5, 3), "leaky_relu", 0.01, False),
    "2d_elu_residual": ((8, 6), "elu", 0.5, True),
}


def case_tensors(name):
    """The whole batch's input, output gradient, residual and layer parameters, the same in every process."""
    shape, _, _, with_residual = CASES[name]
    gen = torch.Generator().manual_seed(len(name))
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 0.5
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    residual = torch.randn(shape, generator=gen, dtype=torch.float64) if with_residual else None
    weight = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    return x, g, residual, weight


def run_case(layer, name, rows):
    """Two training steps on rows `rows` of the case's batch; output, gradients and running statistics."""
    x, g, residual, weight = case_tensors(name)
    layer.double()
    with torch.no_grad():
        layer.weight.copy_(weight)
    results = {}
    for step in range(2):
        xi = x[rows].clone().requires_grad_()
        ri = residual[rows].clone().requires_grad_() if residual is not None else None
        layer.weight.grad = layer.bias.grad = None
        y = layer(xi * (step + 1.0), ri)
        (y * g[rows]).sum().backward()
        results.update(y=y.detach(), dx=xi.grad, dweight=layer.weight.grad, dbias=layer.bias.grad,
                       dresidual=ri.grad if ri is not None else None)
    results.update(running_mean=layer.running_mean.clone(), running_var=layer.running_var.clone())
    return results


def make_layer(cls, name, backend, **kwargs):
    _, activation, param, _ = CASES[name]
    return cls(CASES[name][0][1], activation=activation, activation_param=param, backend=backend, **kwargs)


def worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=len(SPLIT))
    start = sum(SPLIT[:rank])
    rows = slice(start, start + SPLIT[rank])
    explicit = dist.new_group([0, 1])
    results = {}
    for backend in AVAILABLE_BACKENDS:
        for name in CASES:
            results[(backend, name)] = run_case(make_layer(InPlaceABNSync, name, backend), name, rows)
            results[(backend, name, "group")] = run_case(
                make_layer(InPlaceABNSync, name, backend, group=explicit), name, rows)
            results[(backend, name, "unsynced")] = run_case(make_layer(InPlaceABN, name, backend), name, rows)
    torch.save(results, f"{out_dir}/rank{rank}.pt")
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def rank_results(module_tmp):
    out_dir = module_tmp("sync")
    mp.spawn(worker, args=(free_port(), str(out_dir)), nprocs=len(SPLIT), join=True)
    return [torch.load(out_dir / f"rank{rank}.pt") for rank in range(len(SPLIT))]


@pytest.mark.parametrize("group", [None, "group"], ids=["default_group", "explicit_group"])
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_ranks_match_one_process_on_whole_batch(rank_results, backend, name, group):
    key = (backend, name) if group is None else (backend, name, group)
    whole = run_case(make_layer(InPlaceABN, name, backend), name, slice(None))
    ranks = [results[key] for results in rank_results]
    # float64, one backend on both sides (its float32 scalars alike): only the order of the sums differs
    for field in ("y", "dx") + (("dresidual",) if whole["dresidual"] is not None else ()):
        assert_same_function(torch.cat([r[field] for r in ranks]), whole[field], field, PURE_FLOAT64_TOL)
    for field in ("dweight", "dbias"):  # local sums, as DistributedDataParallel expects: they add up
        assert_same_function(sum(r[field] for r in ranks), whole[field], f"sum of {field} over ranks",
                             PURE_FLOAT64_TOL)
    for field in ("running_mean", "running_var"):
        for rank, r in enumerate(ranks):
            assert_same_function(r[field], whole[field], f"{field} of rank {rank}", PURE_FLOAT64_TOL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unsynchronised_ranks_differ_from_whole_batch(rank_results, backend):
    """The comparison above can fail: InPlace-ABN without synchronisation sees only its own rows."""
    name = "4d_leaky"
    whole = run_case(make_layer(InPlaceABN, name, backend), name, slice(None))
    unsynced = [results[(backend, name, "unsynced")] for results in rank_results]
    # margins far above the 1e-10 the synchronised ranks are held to: batch statistics of 3 or 5 rows, not 8
    assert_differs(torch.cat([r["y"] for r in unsynced]), whole["y"], 1e-2,
                   "unsynchronised outputs and the whole batch's")
    assert_differs(unsynced[0]["running_var"], unsynced[1]["running_var"], 1e-2, "the two ranks' running_var")

"""`iabn-zoo memory --grad-checkpointing`: each mode measured again with its blocks recomputed in backward, and
what that saves (bytes kept) and costs (time) against the same mode without it."""

import argparse
import json

from iabn_zoo.cli import memory as memory_command
from iabn_zoo.train.memory import compare_modes, report_rows


def test_checkpointed_modes_keep_less_and_say_so():
    results = compare_modes("resnet18", batch=2, size=32, grad_checkpointing=True)
    assert [(r.bn_mode, r.grad_checkpointing) for r in results] == [
        ("standard", False), ("inplace", False), ("standard", True), ("inplace", True)]
    rows = report_rows(results)
    plain = {row["bn_mode"]: row for row in rows if not row["grad_checkpointing"]}
    for row in rows:
        if row["grad_checkpointing"]:
            assert row["saved_bytes"] < plain[row["bn_mode"]]["saved_bytes"]
            assert row["ckpt_saved_ratio"] == row["saved_bytes"] / plain[row["bn_mode"]]["saved_bytes"]
            assert row["ckpt_time_ratio"] > 0
        else:
            assert row["ckpt_saved_ratio"] is None and row["ckpt_time_ratio"] is None
    assert rows[0]["saved_ratio"] == 1.0, "ratios are to standard BN without checkpointing"


def run_command(capsys, *extra):
    parser = argparse.ArgumentParser(prog="iabn-zoo")
    memory_command.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["memory", "resnet18", "--batch", "2", "--size", "32", "--repeats", "1", *extra])
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_command_reports_checkpointing_as_json_and_table(capsys):
    report = json.loads(run_command(capsys, "--grad-checkpointing", "--json"))
    assert report["grad_checkpointing"] is True
    assert [(row["bn_mode"], row["grad_checkpointing"]) for row in report["modes"]] == [
        ("standard", False), ("inplace", False), ("standard", True), ("inplace", True)]
    lines = run_command(capsys, "--grad-checkpointing").splitlines()
    header = lines[1].split()
    assert header[:2] == ["bn_mode", "grad_checkpointing"] and header[-2:] == ["ckpt_saved_ratio", "ckpt_time_ratio"]
    assert [line.split()[:2] for line in lines[2:]] == [["standard", "False"], ["inplace", "False"],
                                                       ["standard", "True"], ["inplace", "True"]]

"""`iabn-zoo memory --budget`: the largest batch or crop whose training step fits a budget, checked against real
training steps counted independently; monotone in the budget, in-place never below standard, the JSON entries,
byte sizes as people write them, and bad budgets refused by option name."""

import json

import pytest
import torch
import torch.nn.functional as F
from support.cli import run_cli
from support.segmentation_fixtures import tiny_arch_registered, tiny_vistas_deeplab3

from iabn_zoo.cli.main import main
from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.factory import create_model
from iabn_zoo.system.resources import parse_bytes
from iabn_zoo.train.budget import fit_budget, largest_fitting
from iabn_zoo.train.losses import SegmentationLoss
from iabn_zoo.train.memory import SavedTensorLedger

TINY = tiny_vistas_deeplab3.__name__
MIB = 2 ** 20


@pytest.fixture()
def tiny():
    with tiny_arch_registered():
        yield TINY


def real_step_bytes(name: str, bn_mode: str, batch: int, side: int) -> int:
    """What the budget counts, measured here on its own: a real CPU training step of the network (segmentation
    training's own loss, `SegmentationLoss`: per-pixel cross-entropy on logits resized to the crop), the storages it
    keeps for backward, plus weights and buffers, one gradient and one SGD momentum buffer per parameter."""
    torch.manual_seed(0)
    model = create_model(name, bn_mode=bn_mode).train()
    images = torch.randn(batch, 3, side, side)
    ledger = SavedTensorLedger(list(model.parameters()))
    with ledger.recording():
        logits = F.interpolate(model(images), size=(side, side), mode="bilinear", align_corners=False)
        total, pixels = SegmentationLoss("ce")(logits, torch.randint(0, logits.shape[1], (batch, side, side)))
        loss = total / pixels
    loss.backward()
    parameters = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return ledger.saved_bytes + 3 * parameters + buffers


def test_the_largest_batch_fits_and_one_more_does_not_in_real_steps(tiny):
    budget = real_step_bytes(tiny, "inplace", 5, 64) + MIB // 3  # room for five images and a bit
    answers = fit_budget(tiny, budget, fit="batch", size=64)
    assert [(a.bn_mode, a.grad_checkpointing) for a in answers] == [("standard", False), ("inplace", False)]
    for answer in answers:
        assert answer.verified and answer.counted_on == "meta"
        fits, over = real_step_bytes(tiny, answer.bn_mode, answer.answer, 64), \
            real_step_bytes(tiny, answer.bn_mode, answer.answer + 1, 64)
        assert (answer.bytes_at_answer, answer.bytes_above) == (fits, over), \
            f"{answer.bn_mode}: counted {answer.bytes_at_answer}, {answer.bytes_above}; real steps {fits}, {over}"
        assert fits <= budget < over, f"{answer.bn_mode}: batch {answer.answer} needs {fits} of {budget} bytes"
    assert answers[1].answer == 5


def test_the_largest_crop_fits_and_one_pixel_more_does_not(tiny):
    budget = real_step_bytes(tiny, "standard", 2, 100) + 1000
    standard, inplace = fit_budget(tiny, budget, fit="crop", batch=2)
    assert standard.answer == 100, f"the largest crop is {standard.answer} px, not the 100 px the budget was cut to"
    for answer in (standard, inplace):
        assert real_step_bytes(tiny, answer.bn_mode, 2, answer.answer) <= budget
        assert real_step_bytes(tiny, answer.bn_mode, 2, answer.answer + 1) > budget
    assert inplace.answer > standard.answer


def test_answers_grow_with_the_budget_and_inplace_is_never_below_standard(tiny):
    for fit, options in (("batch", {"size": 48}), ("crop", {"batch": 2})):
        previous = {}
        for budget_mib in (3, 8, 24):
            answers = fit_budget(tiny, budget_mib * MIB, fit=fit, grad_checkpointing=fit == "batch", **options)
            by_mode = {(a.bn_mode, a.grad_checkpointing): a.answer or 0 for a in answers}
            assert by_mode[("inplace", False)] >= by_mode[("standard", False)], (fit, budget_mib, by_mode)
            assert all(by_mode[mode] >= previous.get(mode, 0) for mode in by_mode), (fit, budget_mib, by_mode)
            previous = by_mode
        assert previous[("inplace", False)] > 0


def test_nothing_fits_a_budget_below_the_weights(tiny):
    (standard,) = fit_budget(tiny, 1000, fit="batch", size=64, modes=("standard",))
    assert standard.answer is None and standard.bytes_at_answer is None and standard.bytes_above > 1000


def test_inplace_fits_at_least_1_8_times_the_batch_of_standard_bn():
    """resnet18 at 64 px (the bench row's question on a network a test can afford)."""
    standard, inplace = fit_budget("resnet18", 600 * MIB, fit="batch", size=64)
    assert inplace.answer >= 1.8 * standard.answer, f"in-place {inplace.answer}, standard {standard.answer}"


@pytest.mark.parametrize("guess", [1, 2, 7, 40, 41, 42, 500, 10 ** 6])
def test_the_search_finds_the_answer_from_any_guess(guess):
    def count(x):  # a step function, as feature-map sizes make it
        return 1000 + 100 * ((x + 2) // 3)

    answer, counts = largest_fitting(count, 2400, 2, guess)
    assert answer == 42 and count(42) <= 2400 < count(43)
    assert len(counts) < 45, f"{len(counts)} counts"
    assert largest_fitting(count, 1000, 2, guess)[0] is None


def test_command_json_gives_one_entry_per_mode(tiny, capsys):
    assert main(["memory", tiny, "--image-size", "48,64", "--batch-size", "2", "--budget", "8MiB",
                 "--grad-checkpointing", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["fit"], report["budget_bytes"], report["image_size"]) == ("batch", 8 * MIB, [48, 64])
    assert "meta device" in report["how"]
    assert [(m["bn_mode"], m["grad_checkpointing"]) for m in report["modes"]] == [
        ("standard", False), ("inplace", False), ("standard", True), ("inplace", True)]
    for mode in report["modes"]:
        assert isinstance(mode["max_batch"], int) and mode["bytes_at_answer"] <= 8 * MIB < mode["bytes_one_more"]
    assert main(["memory", tiny, "--fit", "crop", "--budget", "8MiB", "--batch-size", "2", "--json"]) == 0
    assert all(isinstance(m["max_crop"], int) for m in json.loads(capsys.readouterr().out)["modes"])


def test_command_table_says_how_the_answer_was_obtained(tiny, capsys):
    assert main(["memory", tiny, "--image-size", "64", "--budget", "8MiB"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{tiny}: the largest batch at 64x64 px whose training step fits 8.0 MiB")
    assert lines[1].split()[:3] == ["bn_mode", "grad_checkpointing", "max_batch"]
    assert [line.split()[0] for line in lines[2:4]] == ["standard", "inplace"]
    assert lines[4].startswith("How: a real training step")


@pytest.mark.parametrize("text, expected", [
    ("16GiB", 16 * 2 ** 30), ("500MB", 500 * 10 ** 6), ("2.5G", int(2.5 * 2 ** 30)), ("512 MiB", 512 * MIB),
    ("4096", 4096), ("3kb", 3000), ("1T", 2 ** 40),
])
def test_byte_sizes_as_people_write_them(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["lots", "-1G", "0", "1e9", "16 parsecs", "GiB", ""])
def test_bad_sizes_are_refused(text):
    with pytest.raises(InvalidArgumentError, match="budget"):
        parse_bytes(text)


def test_a_bad_budget_exits_2_naming_the_option():
    done = run_cli("memory", "resnet18", "--budget", "16 parsecs")
    assert done.returncode == 2, done.stderr
    assert "--budget must be a memory size" in done.stderr and "'16 parsecs'" in done.stderr
    assert done.stdout == ""

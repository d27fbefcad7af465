"""One vocabulary on every command (issue 15): the same option names and defaults, every default in --help, a
description for every sub-command, --debug and --json before or after the sub-command, --version, library errors
spelt as the command's flags at the command line and as Python names from Python."""

from __future__ import annotations

import argparse

import pytest
from support.cli import run_cli
from support.image_folders import write_colour_dataset

from iabn_zoo import __version__
from iabn_zoo.cli.main import build_parser
from iabn_zoo.cli.options import HelpFormatter
from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.train.finetune import finetune

RUN_NETWORKS = ("finetune", "evaluate", "predict", "segment", "memory")


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    """Every sub-command parser, nested ones (`cache prune`) included, by their full name."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[f"{prefix}{name}"] = sub
                found.update(commands(sub, f"{prefix}{name} "))
    return found


COMMANDS = commands(build_parser())


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {action.option_strings[0]: action for action in parser._actions if action.option_strings}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_a_description_and_shows_every_default(name):
    parser = COMMANDS[name]
    assert parser.description and len(parser.description) > 30, name
    formatter = HelpFormatter(prog=name)
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action.nargs == 0 \
                or action.required:
            continue
        if action.option_strings or action.nargs == "?":
            assert "default" in formatter._get_help_string(action), f"{name} {action.option_strings}: {action.help}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_takes_the_shared_flags(name):
    assert {"--json", "--debug", "--no-progress"} <= set(options(COMMANDS[name])), name


def test_shared_options_have_one_name_and_one_default():
    for name in RUN_NETWORKS:
        device = options(COMMANDS[name])["--device"]
        assert device.default == "auto" and "auto" in device.help, name
    for name in ("evaluate", "predict", "memory"):  # segment takes one image at a time
        assert options(COMMANDS[name])["--batch-size"].default == 32, name
    assert "(default 32)" in options(COMMANDS["finetune"])["--batch-size"].help  # a resume keeps the run's own
    for name in ("finetune", "evaluate", "predict", "memory"):
        assert options(COMMANDS[name])["--image-size"].dest == "image_size", name
    assert options(COMMANDS["memory"])["--image-size"].default == 224
    assert "(default 224)" in options(COMMANDS["finetune"])["--image-size"].help
    for name in ("finetune", "evaluate"):
        assert {"--num-workers", "--on-error"} <= set(options(COMMANDS[name])), name


def test_old_spellings_stay_as_aliases():
    parser = build_parser()
    memory = parser.parse_args(["memory", "resnet18", "--batch", "2", "--size", "64"])
    assert (memory.batch_size, memory.image_size) == (2, 64)
    evaluate = parser.parse_args(["evaluate", "m", "d", "--crop", "200"])
    assert evaluate.image_size == 200


def test_flags_before_or_after_the_command_and_the_version():
    before = run_cli("--json", "list", "resnet50*")
    after = run_cli("list", "resnet50*", "--json")
    assert before.returncode == after.returncode == 0 and before.stdout == after.stdout and before.stdout[0] == "["
    for argv in (["--debug", "download", "no_such_weights"], ["download", "no_such_weights", "--debug"]):
        done = run_cli(*argv)
        assert done.returncode == 3 and "Traceback" in done.stderr and "UnknownNameError" in done.stderr, argv
    plain = run_cli("download", "no_such_weights")
    assert plain.returncode == 3 and "Traceback" not in plain.stderr
    version = run_cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"iabn-zoo {__version__}"


def test_library_errors_name_flags_at_the_command_line_and_python_names_from_python(tmp_path):
    data = write_colour_dataset(tmp_path / "data", train=2, val=1, size=8)
    done = run_cli("finetune", "resnet18", data, "--out", tmp_path / "run", "--batch-size", "1")
    assert done.returncode == 2 and "error: --batch-size must be an integer >= 2" in done.stderr
    memory = run_cli("memory", "resnet18", "--batch", "1")
    assert memory.returncode == 2 and "error: --batch-size must be an integer >= 2" in memory.stderr
    with pytest.raises(InvalidArgumentError) as error:
        finetune("resnet18", data, tmp_path / "run", batch_size=1)
    assert str(error.value).startswith("batch_size must be an integer >= 2")
    assert not (tmp_path / "run").exists()

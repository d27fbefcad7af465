"""A worker for the tests of runs under torchrun (`python -m torch.distributed.run ... elastic_worker.py ARGS`, or on
its own as one process): the real `iabn-zoo` command line, with the tiny architectures registered
(`tiny_vistas_deeplab3`, `tiny_classifier`) and faults injected at a chosen optimizer step on the job's first
attempt, by environment variables:

  IABN_TEST_FAULT=kill@7:node1  SIGKILL this worker after optimizer step 7 if it runs on node 1 (GROUP_RANK)
  IABN_TEST_FAULT=wait@5:rank1  after step 5 rank 1 writes its pid to IABN_TEST_MARKERS/rank1 and waits until it
                                has been sent SIGTERM (which the test sends once the file exists)
  IABN_TEST_DTYPE=float64       the default dtype of fine-tuning (the networks' parameters; inputs follow them)

ARGS are one command line, or several separated by `--then` (run in turn in the same processes; the worker prints
`exit COMMAND CODE` after each and exits with the first non-zero code).
"""

import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from iabn_zoo import cli  # noqa: E402
from iabn_zoo.train import loop  # noqa: E402
from support.segmentation_fixtures import tiny_arch_registered  # noqa: E402
from support.tiny_classifier import tiny_classifier_registered  # noqa: E402


def targeted(where: str) -> bool:
    """Whether `where` (`node1`: GROUP_RANK 1, `rank1`: RANK 1, or empty: everyone) names this worker."""
    if not where:
        return True
    kind = where.rstrip("0123456789")
    variable = {"node": "GROUP_RANK", "rank": "RANK"}[kind]
    return os.environ.get(variable, "0") == where[len(kind):]


def inject(fault: str) -> None:
    """Wrap the training step so that the fault strikes right after optimizer step N."""
    kind, _, rest = fault.partition("@")
    at, _, where = rest.partition(":")
    step_once = loop.Trainer.optimize

    def optimize(self, *args):
        step_once(self, *args)
        if self.step + 1 != int(at) or not targeted(where):
            return
        if kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif kind == "wait":
            Path(os.environ["IABN_TEST_MARKERS"], f"rank{self.procs.rank}").write_text(str(os.getpid()))
            while not self.boundary.watch.requested:  # synchronisation with the test, not a timing guess
                time.sleep(0.01)

    loop.Trainer.optimize = optimize


def commands(argv: list[str]) -> list[list[str]]:
    parts, current = [], []
    for item in argv:
        if item == "--then":
            parts.append(current)
            current = []
        else:
            current.append(item)
    return parts + [current]


def main() -> int:
    torch.set_num_threads(1)
    training_dtype = getattr(torch, os.environ.get("IABN_TEST_DTYPE", "float32"))
    if os.environ.get("IABN_TEST_FAULT") and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0":
        inject(os.environ["IABN_TEST_FAULT"])
    first_failure = 0
    with tiny_arch_registered(), tiny_classifier_registered():
        for argv in commands(sys.argv[1:]):
            torch.set_default_dtype(training_dtype if argv[0] == "finetune" else torch.float32)
            code = cli.main(argv)
            print(f"exit {argv[0]} {code}", flush=True)
            first_failure = first_failure or code
    return first_failure


if __name__ == "__main__":
    sys.exit(main())

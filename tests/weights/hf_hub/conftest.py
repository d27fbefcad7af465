"""The loopback Hugging Face Hub these tests talk to, and what they publish on it.

huggingface_hub reads HF_ENDPOINT, HF_HOME and HF_HUB_DISABLE_XET when it is imported, so the Hub is started and
those variables set here, while this folder is collected: before any test imports huggingface_hub in this process.
Child processes get the same variables (`hub_env`), with their own HF_HOME where a test needs an empty cache. Every
test names its repositories apart (`unique`), so that the session's Hugging Face cache needs no cleaning between
tests. The runs pushed are real: resnet18 and deeplabv3_resnet18 fine-tuned for one epoch on tiny data (their first
stages frozen, which makes the optimizer steps cheaper).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import pytest
from support.hub_server import HubServer
from support.image_folders import write_colour_dataset
from support.mask_data import write_square_scenes

OWNER, TOKEN = "alice", "hf_alice_write"
if "huggingface_hub" in sys.modules:  # pragma: no cover - a guard, not a path
    raise RuntimeError("huggingface_hub was imported before the loopback Hub was set up: its HF_ENDPOINT is fixed")
HUB = HubServer().start()
HUB.add_user(OWNER, TOKEN, orgs={"zoo-mirrors": "admin", "readers": "read"})
HF_HOME = Path(tempfile.mkdtemp(prefix="iabn_hf_home_"))
HUB_VARIABLES = {"HF_ENDPOINT": HUB.endpoint, "HF_HOME": str(HF_HOME), "HF_HUB_DISABLE_XET": "1",
                 "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_UPDATE_CHECK": "1"}
os.environ.update(HUB_VARIABLES)
atexit.register(HUB.stop)
atexit.register(shutil.rmtree, HF_HOME, True)


@pytest.fixture
def hub() -> HubServer:
    """The session's loopback Hub (its requests log is cleared for the test)."""
    with HUB.lock:
        HUB.requests.clear()
    return HUB


@pytest.fixture
def token(monkeypatch) -> str:
    """HF_TOKEN set to the token of the user who owns `alice/*` (and is admin of zoo-mirrors)."""
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


@pytest.fixture
def owner_token() -> str:
    """The token of alice (without setting HF_TOKEN)."""
    return TOKEN


@pytest.fixture(autouse=True)
def no_token(monkeypatch):
    """No token unless a test asks for one (`token`), and nothing saved by `hf auth login` in the test HF_HOME."""
    monkeypatch.delenv("HF_TOKEN", raising=False)


def unique_repo(stem: str, owner: str = OWNER) -> str:
    """A repository id no other test uses."""
    return f"{owner}/{stem}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def unique():
    """`unique(stem, owner=alice)`: a repository id no other test uses."""
    return unique_repo


@pytest.fixture
def hub_env():
    """`hub_env(hf_home=None, **extra)`: the variables of a child process talking to the loopback Hub (with its own
    HF_HOME if given)."""

    def variables(hf_home: Path | None = None, **extra: str) -> dict[str, str]:
        found = {**HUB_VARIABLES, **({"HF_HOME": str(hf_home)} if hf_home is not None else {}), **extra}
        return {key: str(value) for key, value in found.items()}

    return variables


@pytest.fixture(scope="session")
def pushed(runs) -> dict[str, str]:
    """Both runs pushed to fresh repositories of the loopback Hub, through the command line."""
    import iabn_zoo.cli as cli

    names = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_TOKEN", TOKEN)
        for kind in ("classification", "segmentation"):
            names[kind] = unique_repo(kind)
            assert cli.main(["push", str(runs[kind]), names[kind], "--json", "--no-progress"]) == 0
    return names


@pytest.fixture(scope="session")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A finished classification run and a finished segmentation run, trained for real (one epoch, tiny data)."""
    from iabn_zoo.train.finetune import finetune

    base = tmp_path_factory.mktemp("hub_runs")
    colours = write_colour_dataset(base / "colours", train=6, val=6, size=16)
    scenes = write_square_scenes(base / "scenes", train=4, val=4, size=32)
    common = dict(epochs=1, optimizer="adamw", lr=1e-3, num_workers=0, progress=False, freeze_stages=3)  # cheaper
    finetune("resnet18", colours, base / "colours_run", batch_size=6, image_size=16, augment="light", **common)
    finetune("deeplabv3_resnet18", scenes, base / "scenes_run", batch_size=4, image_size=32, augment="none",
             backbone_weights="none", **common)
    return {"classification": base / "colours_run", "segmentation": base / "scenes_run",
            "colours": colours, "scenes": scenes}

"""Round trips through the loopback Hub and real processes: a classification RUN and a segmentation RUN pushed, then
loaded in a fresh process with an empty Hugging Face cache (the same tensors, the same outputs as the local RUN, in
float64), and loaded again with HF_HUB_OFFLINE=1 without a single request; the repository's layout and card."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from support import forkserver
from support.cli import REPO
from support.hub_repos import front_matter

import iabn_zoo.cli as cli
from iabn_zoo.factory import load_run
from iabn_zoo.system.tensor_files import read_safetensors

INPUT = {"classification": (2, 3, 16, 16), "segmentation": (1, 3, 32, 32)}
# a fresh process: load each repository, keep its tensors and its float64 outputs on a fixed input
LOAD = """
import json, sys, torch, iabn_zoo as zoo
from safetensors.torch import save_file
shapes, out = json.loads(sys.argv[1]), sys.argv[2]
tensors = {}
for kind, (name, shape) in shapes.items():
    model = zoo.create_model(name, pretrained=True).double().eval()
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        tensors[kind + ".output"] = model(x)
    tensors.update({f"{kind}.state.{k}": v for k, v in model.state_dict().items()})
save_file({k: v.contiguous() for k, v in tensors.items()}, out)
"""


def load_in_fresh_process(hub_env, names: dict[str, str], out, hf_home, **extra: str) -> dict[str, torch.Tensor]:
    shapes = {kind: (f"hf-hub:{name}", INPUT[kind]) for kind, name in names.items()}
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "IABN_ZOO_HOME": str(out.parent / "zoo_home"),
           "OMP_NUM_THREADS": "1", **hub_env(hf_home, **extra)}
    done = forkserver.run([sys.executable, "-c", LOAD, json.dumps(shapes), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return read_safetensors(out)


def local_outputs(run, kind: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model = load_run(run).double().eval()
    x = torch.randn(*INPUT[kind], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        return model(x), model.state_dict()


def test_runs_load_from_an_empty_cache_then_offline_with_the_local_runs_outputs(runs, pushed, hub, hub_env,
                                                                                tmp_path):
    hf_home = tmp_path / "empty_hf_home"
    loaded = load_in_fresh_process(hub_env, pushed, tmp_path / "online.safetensors", hf_home)
    assert hub.hits("GET", "storage:/lfs/") == 2, "each model.safetensors is downloaded once, from storage"
    for kind in ("classification", "segmentation"):
        expected, state = local_outputs(runs[kind], kind)
        for key, value in state.items():
            assert torch.equal(loaded[f"{kind}.state.{key}"], value), f"{kind}: tensor {key} differs"
        difference = (loaded[f"{kind}.output"] - expected).abs().max().item()
        assert difference < 1e-6, f"{kind}: outputs differ from the local run's by {difference:.3g} (float64)"
    before = len(hub.requests)
    offline = load_in_fresh_process(hub_env, pushed, tmp_path / "offline.safetensors", hf_home, HF_HUB_OFFLINE="1")
    assert len(hub.requests) == before, f"offline loads sent {hub.requests[before:]}"
    for key, value in loaded.items():
        assert torch.equal(offline[key], value), f"offline load differs at {key}"


def test_the_repository_holds_config_weights_classes_and_a_card_the_hub_reads(runs, pushed, hub):
    for kind, name in pushed.items():
        files = hub.find(name).commit_at("main").files
        assert {"config.json", "model.safetensors", "classes.csv", "README.md", "curves.png"} <= set(files)
        assert files["model.safetensors"].lfs and not files["config.json"].lfs
        config = json.loads(files["config.json"].data)
        assert config["format"] == "iabn-zoo" and config["format_version"] == 1 and config["task"] == kind
        assert config["weights"]["sha256"] == files["model.safetensors"].sha256
        assert config["source"]["md5"] == config["weights"]["md5"]  # a run's file is pushed as it is
        assert files["model.safetensors"].data == (runs[kind] / "model.safetensors").read_bytes()
        card_text = files["README.md"].data.decode()
        metadata = ModelCard(card_text).data.to_dict()  # huggingface_hub's own reading of the card
        assert metadata == front_matter(card_text)
        assert metadata["library_name"] == "iabn-zoo" and "license" not in metadata  # trained from scratch
        assert metadata["pipeline_tag"] == f"image-{kind}"
        results = metadata["model-index"][0]["results"][0]
        final = [json.loads(line) for line in (runs[kind] / "metrics.jsonl").read_text().splitlines()][-1]
        key = "val_miou" if kind == "segmentation" else "val_top1"
        assert results["metrics"][0]["value"] == pytest.approx(final[key], abs=1e-4)
        assert f'create_model("hf-hub:{name}"' in card_text or f'from_weights("hf-hub:{name}")' in card_text
        assert "![curves.png](curves.png)" in card_text and "@inproceedings{rotabulo2017place" in card_text
        assert '"epochs": 1' in card_text  # how it was trained
    info = HfApi().model_info(pushed["segmentation"], files_metadata=True)  # what the Hub shows of it
    assert info.card_data.library_name == "iabn-zoo" and info.card_data.pipeline_tag == "image-segmentation"
    weights = next(sibling for sibling in info.siblings if sibling.rfilename == "model.safetensors")
    config = json.loads(hub.find(pushed["segmentation"]).commit_at("main").files["config.json"].data)
    assert weights.lfs.sha256 == config["weights"]["sha256"] and weights.size == config["weights"]["size"]
    segmentation = hub.find(pushed["segmentation"]).commit_at("main").files
    assert any(path.startswith("samples/") for path in segmentation)
    card = segmentation["README.md"].data.decode()
    assert "Per-class IoU" in card and "| background |" in card


def test_a_second_push_keeps_the_card_unless_asked_and_goes_to_a_branch(runs, pushed, hub, token, capsys):
    name = pushed["classification"]
    repo = hub.find(name)
    hub.commit(repo, {"README.md": b"---\nlicense: mit\n---\n# written on the Hub\n"}, "edited by hand")
    assert cli.main(["push", str(runs["classification"]), name, "--json", "--revision", "v2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["card_kept"] and result["revision"] == "v2" and "README.md" not in result["files"]
    assert repo.commit_at("v2").files["README.md"].data.startswith(b"---\nlicense: mit")
    assert result["commit"] == repo.commit_at("v2").oid  # nothing changed: huggingface_hub makes no empty commit
    assert cli.main(["push", str(runs["classification"]), name, "--json", "--replace-card"]) == 0
    assert not json.loads(capsys.readouterr().out)["card_kept"]
    assert b"library_name" in repo.commit_at("main").files["README.md"].data


def test_a_private_push_is_private(runs, hub, token, unique, capsys):
    name = unique("private")
    assert cli.main(["push", str(runs["classification"]), name, "--private", "--json"]) == 0
    assert hub.find(name).private


def test_a_saved_folder_is_the_repository_and_loads_as_a_model_without_any_network(runs, hub, tmp_path, capsys):
    folder = tmp_path / "repo"
    assert cli.main(["push", str(runs["segmentation"]), "--to-folder", str(folder), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)["files"]
    assert {"config.json", "model.safetensors", "classes.csv", "README.md", "curves.png"} <= set(listed)
    assert hub.requests == []
    expected = load_run(runs["segmentation"]).state_dict()  # downloaded by hand, a repository is a MODEL:
    differing = [k for k, v in load_run(folder).state_dict().items() if not torch.equal(v, expected[k])]
    assert differing == []
    assert "hf-hub:ORG/NAME" in (folder / "README.md").read_text()

"""The Hub's parts that need no server: names, the card's front matter as huggingface_hub and YAML read it, licences,
and hashing a file while another thread writes it."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
import yaml
from huggingface_hub import ModelCard

from iabn_zoo.errors import InvalidArgumentError
from iabn_zoo.weights.hf_hub.card import CardFacts, Metric, hub_license, render_card, yaml_lines
from iabn_zoo.weights.hf_hub.names import parse_hub_name
from iabn_zoo.weights.hf_hub.tail_hash import TailHash


def test_hub_names_are_checked():
    for text in ("hf-hub:noslash", "hf-hub:a/b--c", "hf-hub:a/b@", "hf-hub:-a/b", "hf-hub:a/b@x y", "hf-hub:a/b/c",
                 "resnet18"):
        with pytest.raises(InvalidArgumentError, match="hf-hub:ORG/NAME"):
            parse_hub_name(text)
    name = parse_hub_name("hf-hub:org/net.v1@refs/pr/3")
    assert (name.repo_id, name.revision, name.text) == ("org/net.v1", "refs/pr/3", "hf-hub:org/net.v1@refs/pr/3")
    assert parse_hub_name("hf-hub:org/net").revision is None


@pytest.mark.parametrize("text, expected", [
    ("CC BY-NC-SA 4.0", {"license": "cc-by-nc-sa-4.0"}),
    ("ImageNet terms of access (non-commercial research and education)",
     {"license": "other", "license_name": "imagenet-terms-of-access",
      "license_link": "https://image-net.org/download.php"}),
    ("mit", {"license": "mit"}),
    ("Our lab's licence v2", {"license": "other", "license_name": "our-lab-s-licence-v2"}),
    ("", {}),
])
def test_licences_are_the_weights_own(text, expected):
    assert hub_license(text) == expected


def test_the_front_matter_reads_back_as_written_even_with_awkward_class_names():
    awkward = ['say "yes"', "colon: here", "- dash", "#hash", "naïve", "null", "true", "1.5", "line\nbreak"]
    facts = CardFacts(title="t", summary="s", task="segmentation", arch="deeplabv3_resnet18", num_classes=9,
                      bn_mode="inplace", license="CC BY-NC-SA 4.0", preprocessing={"long_side": 64},
                      metrics=[Metric("miou", "Mean IoU (%)", 41.25, "mean_iou")],
                      dataset={"name": "scenes: a/b", "type": "scenes"}, datasets=["a", "b"],
                      per_class_iou=[(name, None if i % 2 else 10.0 * i) for i, name in enumerate(awkward)])
    card = render_card(facts, "org/model")
    metadata = ModelCard(card).data.to_dict()
    assert metadata["license"] == "cc-by-nc-sa-4.0" and metadata["pipeline_tag"] == "image-segmentation"
    assert metadata["datasets"] == ["a", "b"] and metadata["library_name"] == "iabn-zoo"
    result = metadata["model-index"][0]
    assert result["name"] == "model" and result["results"][0]["dataset"]["name"] == "scenes: a/b"
    assert result["results"][0]["metrics"] == [{"type": "mean_iou", "value": 41.25, "name": "Mean IoU (%)"}]
    nested = {"list": awkward, "empty": [], "none": None, "deep": [{"a": [1, {"b": "c"}]}], "nan": float("nan")}
    assert yaml.safe_load("\n".join(yaml_lines(nested))) == {**nested, "nan": None}


def test_tail_hash_follows_a_growing_file_and_never_vouches_for_bytes_it_did_not_read(tmp_path):
    data = os.urandom(3 << 20)
    final = tmp_path / "blob"

    def write(restart: bool) -> None:
        temporary = tmp_path / "blob.1234.incomplete"
        with open(temporary, "wb") as handle:
            if restart:  # a first attempt, then a start over (a server that ignored a resume range)
                handle.write(b"\0" * (1 << 20))
                handle.flush()
                time.sleep(0.05)
                handle.seek(0)
                handle.truncate()
            for offset in range(0, len(data), 256 << 10):
                handle.write(data[offset:offset + (256 << 10)])
                handle.flush()
                time.sleep(0.002)
        os.replace(temporary, final)

    for restart in (False, True):
        with TailHash(tmp_path, "sha256") as watcher:
            writer = threading.Thread(target=write, args=(restart,))
            writer.start()
            writer.join()
        digest = watcher.digest(final)
        if restart:
            assert digest != hashlib.sha256(data).hexdigest(), "it vouched for bytes it never read"
        else:
            assert digest == hashlib.sha256(data).hexdigest() and watcher.consumed == len(data)
        final.unlink()
    assert TailHash(tmp_path / "nowhere", "sha256").digest(final) is None  # never saw a file

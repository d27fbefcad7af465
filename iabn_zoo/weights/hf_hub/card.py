"""The model card (README.md) of a repository, generated from data: Hub front matter (library_name, the weights' own
licence, tags, pipeline_tag, datasets where known, model-index metrics), then what the network is, its metrics, three
lines that load it, how it was trained, its pictures and the paper's citation.

The licence is the weights' own, never a default: the Vistas network's CC BY-NC-SA 4.0 is `cc-by-nc-sa-4.0`, the
ImageNet terms of access are `other` with a name and a link, a fine-tuned run carries its source's. The front
matter is written as YAML whose scalars are JSON literals (valid YAML), so no YAML library is needed to write it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

LIBRARY = "iabn-zoo"
REPOSITORY = "https://github.com/mapillary/inplace_abn"
PAPER = "https://arxiv.org/abs/1712.02616"
PIPELINES = {"classification": "image-classification", "segmentation": "image-segmentation"}
# our licence texts -> (Hub id, licence name, link); anything unknown becomes `other` with its text as the name
LICENSES = {
    "cc by-nc-sa 4.0": ("cc-by-nc-sa-4.0", None, None),
    "imagenet terms of access (non-commercial research and education)":
        ("other", "imagenet-terms-of-access", "https://image-net.org/download.php"),
}
SPDX_LIKE = {"apache-2.0", "mit", "bsd-3-clause", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0",
             "cc0-1.0", "openrail", "other"}
CITATION = """@inproceedings{rotabulo2017place,
  title     = {In-Place Activated BatchNorm for Memory-Optimized Training of DNNs},
  author    = {Rota Bul\\`o, Samuel and Porzi, Lorenzo and Kontschieder, Peter},
  booktitle = {Proceedings of the IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2018}
}"""


@dataclass(frozen=True)
class Metric:
    """One measured score: its key in config.json, how the card names it, its value (percent)."""

    key: str
    label: str
    value: float
    kind: str  # model-index metric type: accuracy, mean_iou, pixel_accuracy


@dataclass(frozen=True)
class CardFacts:
    """What the card says, gathered by `publication` from a fine-tuning run or a published checkpoint."""

    title: str
    summary: str
    task: str
    arch: str
    num_classes: int
    bn_mode: str
    license: str
    preprocessing: dict[str, Any]
    metrics: list[Metric]
    dataset: dict[str, str] | None = None  # model-index dataset: name, type (and split)
    datasets: list[str] = field(default_factory=list)  # Hub dataset ids of the front matter
    per_class_iou: list[tuple[str, float | None]] = field(default_factory=list)
    training: dict[str, Any] | None = None
    pictures: list[str] = field(default_factory=list)
    weights_line: str = ""


def hub_license(text: str) -> dict[str, str]:
    """The front matter's licence fields for one of our licence texts (none for an empty text)."""
    normal = " ".join(text.split()).lower()
    if not normal:
        return {}
    if normal in LICENSES:
        identifier, name, link = LICENSES[normal]
    elif normal in SPDX_LIKE:
        identifier, name, link = normal, None, None
    else:
        identifier, name, link = "other", re.sub(r"[^a-z0-9]+", "-", normal).strip("-") or None, None
    fields = {"license": identifier}
    if name is not None:
        fields["license_name"] = name
    if link is not None:
        fields["license_link"] = link
    return fields


def front_matter(facts: CardFacts, repo_id: str | None) -> dict[str, Any]:
    """The card's metadata, as the Hub reads it."""
    data: dict[str, Any] = {"library_name": LIBRARY, **hub_license(facts.license),
                            "tags": [LIBRARY, "inplace-abn", "pytorch", "safetensors", facts.arch,
                                     PIPELINES[facts.task]],
                            "pipeline_tag": PIPELINES[facts.task]}
    if facts.datasets:
        data["datasets"] = list(facts.datasets)
    if facts.metrics and facts.dataset:
        data["model-index"] = [{"name": (repo_id or facts.title).rpartition("/")[2], "results": [{
            "task": {"type": PIPELINES[facts.task], "name": PIPELINES[facts.task].replace("-", " ").capitalize()},
            "dataset": dict(facts.dataset),
            "metrics": [{"type": metric.kind, "value": round(metric.value, 4), "name": metric.label}
                        for metric in facts.metrics]}]}]
    return data


def render_card(facts: CardFacts, repo_id: str | None) -> str:
    """README.md: front matter, then the card's sections."""
    repo = repo_id or "ORG/NAME"
    lines = ["---", *yaml_lines(front_matter(facts, repo_id)), "---", "", f"# {facts.title}", "", facts.summary, ""]
    lines += _facts_table(facts)
    lines += _metrics_section(facts)
    lines += _usage_section(facts, repo)
    if facts.training is not None:
        lines += ["## Training", "", "The run's configuration (`iabn-zoo finetune`):", "", "```json",
                  json.dumps(facts.training, indent=2), "```", ""]
    if facts.pictures:
        lines += ["## Pictures", ""] + [f"![{path}]({path})" for path in facts.pictures] + [""]
    lines += ["## Citation", "", f"In-Place Activated BatchNorm ([paper]({PAPER}), [code]({REPOSITORY})):", "",
              "```bibtex", CITATION, "```", ""]
    return "\n".join(lines)


def _facts_table(facts: CardFacts) -> list[str]:
    norm = {"standard": "BatchNorm + activation", "inplace": "InPlace-ABN", "sync": "InPlace-ABN (synchronised)"}
    prep = ", ".join(f"{key} {value}" for key, value in facts.preprocessing.items())
    rows = [("Architecture", f"`{facts.arch}`"), ("Task", f"{facts.task}, {facts.num_classes} classes"),
            ("Norm layers", norm.get(facts.bn_mode, facts.bn_mode)), ("Preprocessing", prep or "-"),
            ("Weights", facts.weights_line or "model.safetensors"), ("License", facts.license or "not stated")]
    return ["| | |", "|---|---|", *[f"| {key} | {value} |" for key, value in rows], ""]


def _metrics_section(facts: CardFacts) -> list[str]:
    if not facts.metrics:
        return []
    lines = ["## Metrics", "", "| metric | value |", "|---|---|"]
    lines += [f"| {metric.label} | {metric.value:.2f} |" for metric in facts.metrics]
    if facts.per_class_iou:
        lines += ["", "Per-class IoU (%, `-`: the class is absent from the validation masks and predictions):", "",
                  "| class | IoU |", "|---|---|"]
        lines += [f"| {name} | {'-' if iou is None else f'{iou:.2f}'} |" for name, iou in facts.per_class_iou]
    return lines + [""]


def _usage_section(facts: CardFacts, repo: str) -> list[str]:
    name = f"hf-hub:{repo}"
    if facts.task == "segmentation":
        code = ["import PIL.Image, iabn_zoo as zoo",
                f'predictor = zoo.SegmentationPredictor.from_weights("{name}")',
                'classes = predictor.predict(PIL.Image.open("street.jpg")).classes  # class index per pixel']
        command = f"iabn-zoo segment street.jpg --weights {name} --out masks/ --output overlay"
    else:
        code = ["import torch, iabn_zoo as zoo",
                f'model = zoo.create_model("{name}", pretrained=True).eval()',
                "probabilities = model(images).softmax(dim=1)  # images: (N, 3, H, W), normalised as above"]
        command = f"iabn-zoo predict {name} photo.jpg --topk 5"
    return ["## How to use", "", "With [iabn-zoo](https://pypi.org/project/iabn-zoo/) and its `hub` extra "
            "(`pip install 'iabn-zoo[hub]'`):", "", "```python", *code, "```", "", "or on the command line:", "",
            "```bash", command, "```", "",
            f"Fine-tune it further with `iabn-zoo finetune {name} DATA --out RUN`.", ""]


def yaml_lines(value: Any, indent: int = 0) -> list[str]:
    """Block-style YAML of nested dicts and lists whose scalars are written as JSON literals."""
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines += [f"{pad}{key}:", *yaml_lines(item, indent + 1)]
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}")
        return lines
    for item in value:
        if isinstance(item, (dict, list)) and item:
            nested = yaml_lines(item, indent + 1)
            lines += [f"{pad}- {nested[0].lstrip()}", *nested[1:]]
        else:
            lines.append(f"{pad}- {_scalar(item)}")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "null"
    return json.dumps(value)

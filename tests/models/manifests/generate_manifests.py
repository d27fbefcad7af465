"""Write the key/shape manifests of the published ImageNet configurations from the authors' own model code.

Run once, by hand, with the path of an extracted copy of the authors' `scripts` folder (mapillary/inplace_abn):
    python tests/models/manifests/generate_manifests.py /tmp/authors/scripts [weights_name ...]
Nothing of the authors' code is kept here: their modules are imported from that path, their experiment files
(scripts/experiments/*.json) give each configuration, and only the resulting state_dict layout is written.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

MANIFEST_DIR = Path(__file__).resolve().parent
NUM_CLASSES = 1000  # every published ImageNet checkpoint has the 1000-class classifier


def weights_name(experiment_file: Path) -> str:
    """Our weights name of an experiment file: `resnet50_ipabn-sync_lr_512.json` -> `resnet50_ipabn_sync_lr_512`."""
    return experiment_file.stem.replace("-", "_")


def norm_act_for(network: dict):
    """The authors' norm-act class for a configuration's bn_mode, with its activation bound."""
    import inplace_abn

    layer = {"standard": inplace_abn.ABN, "inplace": inplace_abn.InPlaceABN, "sync": inplace_abn.InPlaceABNSync}
    return partial(layer[network["bn_mode"]], activation=network["activation"],
                   activation_param=network["activation_param"])


def build_authors_model(network: dict):
    """Instantiate the authors' network for one experiment's `network` section (as their training script does)."""
    import models

    params = {"norm_act": norm_act_for(network), "classes": NUM_CLASSES}
    is_wider = network["arch"].startswith("wider")
    if network.get("input_3x3", False) and not is_wider:
        params["input_3x3"] = True
    return getattr(models, "net_" + network["arch"])(**params)


def manifest(model) -> list[dict]:
    """The state_dict layout in order: key, shape and dtype of every entry."""
    return [{"key": key, "shape": list(value.shape), "dtype": str(value.dtype).replace("torch.", "")}
            for key, value in model.state_dict().items()]


def to_json(entries: list[dict]) -> str:
    """A JSON list with one entry per line, so that a diff shows which key changed."""
    return "[\n" + ",\n".join(json.dumps(entry) for entry in entries) + "\n]\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("authors_scripts", type=Path, help="extracted `scripts` folder of mapillary/inplace_abn")
    parser.add_argument("names", nargs="*", help="weights names to write (default: every experiment file)")
    args = parser.parse_args()
    sys.path.insert(0, str(args.authors_scripts))
    for experiment in sorted((args.authors_scripts / "experiments").glob("*.json")):
        name = weights_name(experiment)
        if args.names and name not in args.names:
            continue
        network = json.loads(experiment.read_text())["network"]
        out = MANIFEST_DIR / f"{name}.json"
        out.write_text(to_json(manifest(build_authors_model(network))))
        print(f"wrote {out}")


if __name__ == "__main__":
    main()

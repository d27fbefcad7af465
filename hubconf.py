"""torch.hub entry points of iabn-zoo: one per published weights name (pretrained by default), one per
architecture (random initialisation by default), and `hf_hub` taking a Hugging Face Hub repository id
(`torch.hub.load(REPO, "hf_hub", "ORG/NAME")`, which needs huggingface_hub). `torch.hub.list(REPO)` names them,
`torch.hub.help(REPO, NAME)` shows metrics, license and preprocessing, `torch.hub.load(REPO, NAME)` builds the
network. Generated from the registries by iabn_zoo.hub; nothing is defined here.
"""

import iabn_zoo.hub as _hub

dependencies = ["torch", "requests", "tqdm", "safetensors", "PIL", "filelock"]

globals().update(_hub.entry_points())

"""The Hugging Face Hub as a source, a destination and a cache of weights (not torch.hub: that is iabn_zoo.hub).

`hf-hub:ORG/NAME[@REVISION]` (`names`) names a repository in this package's layout (`repo_format`: config.json,
model.safetensors, classes.csv, README.md); `resolve` turns one into a `Weights` entry, `fetch` brings its verified
weights file (or a registry mirror's) into the Hugging Face cache, hashing it as it arrives (`tail_hash`), `client` is
the one door to `huggingface_hub` (the `hub` extra) and its errors; `publication` gathers what a fine-tuning RUN or a
published weights name makes, `card` writes its model card, `publish` writes the repository and pushes it.
Part of weights/. May import: errors, system, layers, weights (the modules the catalog imports never import the
catalog, the cache or the loader back)."""

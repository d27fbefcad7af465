"""Published weights as data and the one loader that owns files, URLs, checksums and key remapping: the registry
(`catalog`, TOML files in `registry/`), Drive pages, download, cache, checkpoint reading, loading tensors into a
network, fine-tuning run directories as sources, and the Hugging Face Hub (`hf_hub/`: a source, a destination and a
cache). Names architectures by string, builds no network.
May import: errors, system, layers (for the norm-mode names it validates)."""

"""The machine-facing mechanisms every layer shares, each with one owner: atomic file writes, file hashing,
safetensors files, device checks, progress bars and memory limits.
May import: errors (nothing else of the package)."""

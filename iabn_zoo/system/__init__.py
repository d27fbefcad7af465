"""The machine-facing mechanisms every layer shares, each with one owner: atomic file writes, file hashing,
safetensors files and device checks. May import: errors (nothing else of the package)."""

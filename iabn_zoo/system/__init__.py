"""The machine-facing mechanisms every layer shares, each with one owner: atomic file writes, file hashing,
safetensors files, device checks, progress bars, memory limits and a process's place in a torchrun job.
May import: errors (nothing else of the package)."""

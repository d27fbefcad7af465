"""The machine-facing mechanisms every layer shares, each with one owner: atomic file writes, file hashing,
safetensors files, device checks, progress bars, memory limits, a process's place in a torchrun job, and helper
threads that leave Ctrl-C to the main thread.
May import: errors (nothing else of the package)."""

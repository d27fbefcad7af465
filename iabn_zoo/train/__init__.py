"""Fine-tuning: configuration, processes (torchrun), the tasks (classification, segmentation: data loaders, losses,
metrics, pictures), the network to train, optimisation, the loop, writing run directories and resume points (at the
ends of epochs and inside them), SIGTERM and torchrun restarts (`step_boundary`, `elastic`); and measuring the memory
of a training step. May import: the front door (`factory`),
models, layers, weights, data, tasks, system, errors."""

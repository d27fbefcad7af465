"""Fine-tuning: configuration, processes (torchrun), the tasks (classification, segmentation: data loaders, losses,
metrics, pictures), the network to train, optimisation, the loop, writing run directories; and measuring the memory
of a training step. May import: the front door (`factory`),
models, layers, weights, data, tasks, system, errors."""

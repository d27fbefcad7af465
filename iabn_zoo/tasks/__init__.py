"""What trained networks are used for: classification accuracy and evaluation over a folder, predicting image
classes, multi-scale segmentation, its output files and renderings. May import: the front door (`factory`),
models, layers, weights, data, system, errors."""

"""Deployment: a network out of eager PyTorch with the same function. `export` writes ONNX (for onnxruntime,
TensorRT) or a torch.export program (.pt2) built from the network's deployable copy (norm layers folded into the
convolutions, standard operators only), with its weights' facts as metadata, and checks the file in its own
runtime after writing. May import: the front door (factory) and below, tasks."""

from ..models._deployable import deployable_copy
from .exporter import FORMATS, ExportReport, export, export_with_report
from .geometry import network_geometry

__all__ = ["FORMATS", "ExportReport", "deployable_copy", "export", "export_with_report", "network_geometry"]

"""Training, prediction and evaluation of TR-DETR on QVHighlights-format data (see training/README.md)."""

"""The bottom layer: configuration, numbers, files, the model, the run folder."""

__version__ = "0.1.0"

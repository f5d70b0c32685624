"""scalelab: how the scale, quality and diversity of training data change a language model's quality."""

__version__ = "0.1.0"

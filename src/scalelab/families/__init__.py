"""One adapter module per model family (a `ModelFamily`, base.py); the registry naming them is
scalelab.models.registry."""

"""Training and evaluation: one run function for every model family, with exact resume."""

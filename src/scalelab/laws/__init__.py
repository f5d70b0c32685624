"""Scaling laws: forms, fitting with bootstrap intervals, backtests, and planning answers."""

"""Deployment: export trained runs to formats other tools load."""

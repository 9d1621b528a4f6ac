"""Inputs prepared before a run: the embedded model converted to a local
directory (model_dirs.py), ready-made datasets (datasets.py)."""

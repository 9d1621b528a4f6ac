"""Experiments over finished runs: ablation grids (ablate.py), their
summaries (results.py) and plots (plots.py), held-out evaluation (evaluate.py)."""

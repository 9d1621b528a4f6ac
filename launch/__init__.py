"""How a run is assembled and started. Its parts, each a subpackage:

- config/       the typed run config, loading and validation
- run/          the step loop, actor groups, checkpoints, faults, metrics
- experiments/  ablation grids, results tables, plots, held-out evaluation
- prepare/      the embedded model and ready-made datasets
- cluster/      Ray/SLURM scripts and `gradus submit`
cli.py is the `gradus` command; errors.py the one user-facing error type.
"""

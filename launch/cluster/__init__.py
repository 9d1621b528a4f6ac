"""Clusters: Ray head/worker scripts, the SLURM batch script, and
`gradus submit` (submit.py), which runs `gradus train` as a Ray job."""

"""The run: the step loop (driver.py), actor groups (groups.py), async
prefetching, the scheduler actor's client, run directories and checkpoints,
faults and preemption, per-step metrics."""

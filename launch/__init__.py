"""How a run is assembled and started: config, models, the step loop, the CLI."""

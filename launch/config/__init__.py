"""Configuration: the typed run config (schema.py), loading presets and
overrides (load.py) and the cross-field checks run before anything starts
(validate.py)."""

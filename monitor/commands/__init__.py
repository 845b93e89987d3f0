"""The commands other than `monitor run`: fit, refit, evaluate, install and rollback, check-config, the demo."""

"""The model side: images in, anomaly map, defects and verdict out. Backbones and features, the scoring methods,
the threshold, defect extraction, acquisition quality and mismatch, the saved artifact and the overlay picture.
It imports nothing of the daemon, the results page or the commands (tests/test_layers.py)."""

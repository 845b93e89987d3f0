"""The daemon (`monitor run`): the service's start and stop, the watched folder's intake, the worker that judges
each image, the alarm state and output files, the metrics endpoint and retention of the output folder."""

"""SEM line monitor: defect detection in SEM images of nanofibrous material."""

__version__ = "0.4.0"  # also the package version (pyproject.toml); see CHANGELOG.md

"""SEM line monitor: defect detection in SEM images of nanofibrous material."""

__version__ = "0.1.0"

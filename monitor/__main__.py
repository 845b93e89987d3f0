"""Entry point: ``python -m monitor`` and the ``monitor`` console script."""

from monitor.cli import entry

if __name__ == "__main__":
    entry()

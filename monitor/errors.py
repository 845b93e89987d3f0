"""The one base of the errors a user can do something about (a bad configuration, file, model, ledger, password, a
missing extra): ``monitor`` prints its message in one line and exits with its ``exit_code``, never a traceback.
Each error keeps the built-in base it had (ValueError, RuntimeError) for the code that catches those."""

from __future__ import annotations


class MonitorError(Exception):
    exit_code = 2  # a usage or input error, as argparse's

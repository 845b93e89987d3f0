"""The results page: the guarded HTTP(S) server (also serves the metrics) and the site built on the ledger."""

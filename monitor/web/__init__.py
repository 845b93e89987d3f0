"""The results page: the guarded HTTP(S) server (also serves the metrics), the site built on the ledger (its Jinja2
templates in ``templates/``, its style sheet in ``static/``) and the page's passwords (``auth``)."""

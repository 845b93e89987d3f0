"""``python -m tests.slim_model DIR``: the suite's two small models (``conftest.fit_small``, ``fit_other``), fitted
by the full install into DIR/small and DIR/other, for the suite's run on the line PC's install, which cannot fit
(``make test``)."""

import sys
from pathlib import Path

from tests.conftest import fit_other, fit_small

if __name__ == "__main__":
    for name, fit in (("small", fit_small), ("other", fit_other)):
        print(name, fit().save(Path(sys.argv[1]) / name))

"""The backtest's rows on disk: Parquet files under ``--out``, written only by the process that runs the job.
Rows arrive in parts (``parts/part-*.parquet``, each written whole and renamed into place, so that a killed run
leaves only complete parts) and are joined into ``rows.parquet`` when the job ends. A rerun reads both and scores
only the images that have no row; a row whose image already has one is never written again."""

from __future__ import annotations

import os
import time
from pathlib import Path

from monitor.commands.backtest.scoring import COLUMNS, BacktestError


def _pa():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        from monitor.extras import MissingExtra

        raise MissingExtra("monitor backtest writes Parquet (pyarrow), which this installation does not have; "
                           "install the cluster extra: pip install 'sem-line-monitor[cluster]'") from None
    return pa, pq


def schema():
    pa, _ = _pa()
    s, f, i = pa.string(), pa.float64(), pa.int32()
    kinds = {"coverage": f, "defects": i, "level": f, "max_score": f, "seconds": f, "fibre_diameter_px": f,
             "baseline_coverage": f, "baseline_defects": i, "baseline_level": f, "old_coverage": f}
    return pa.schema([(c, kinds.get(c, s)) for c in COLUMNS])


class RowStore:
    """The rows of one ``--out`` folder. ``flush_rows``/``flush_seconds``: a part is written when this many rows
    wait, or this long after the last part (a kill loses at most those, and they are scored again)."""

    def __init__(self, out: Path, flush_rows: int = 256, flush_seconds: float = 10.0):
        self.out, self.parts = out, out / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)
        for tmp in self.parts.glob(".part-*.tmp"):  # a part a killed run was writing: its rows are scored again
            tmp.unlink()
        self.flush_rows, self.flush_seconds = flush_rows, flush_seconds
        self._waiting: list[dict] = []
        self._last = time.monotonic()
        self._n = 0
        self.done: set[str] = set(self.table(["path"]).column("path").to_pylist())
        self.duplicates = 0  # rows of images that had one already (a retried batch's): not written

    def files(self) -> list[Path]:
        whole = self.out / "rows.parquet"
        return ([whole] if whole.exists() else []) + sorted(self.parts.glob("part-*.parquet"))

    def table(self, columns: list[str] | None = None):
        """Every row written, as one Arrow table, each image once (the first row written of it)."""
        _, pq = _pa()
        tables = []
        for f in self.files():
            try:
                tables.append(pq.read_table(f, columns=columns))
            except Exception as exc:
                raise BacktestError(f"{f}: not a readable Parquet file ({exc}); move it away to score its images "
                                    "again") from None
        if not tables:
            empty = schema().empty_table()
            return empty if columns is None else empty.select(columns)
        import pyarrow as pa

        t = pa.concat_tables(tables)
        paths = t.column("path").to_pylist()
        if len(set(paths)) < len(paths):  # a part that was joined already (killed between the join and its unlink)
            seen: set[str] = set()
            t = t.take([i for i, p in enumerate(paths) if not (p in seen or seen.add(p))])
        return t

    def add(self, row: dict) -> bool:
        """Keep a row for the next part; False (and not kept) when its image has a row already."""
        if row["path"] in self.done:
            self.duplicates += 1
            return False
        self.done.add(row["path"])
        self._waiting.append(row)
        if len(self._waiting) >= self.flush_rows or time.monotonic() - self._last >= self.flush_seconds:
            self.flush()
        return True

    def flush(self) -> None:
        if not self._waiting:
            return
        pa, pq = _pa()
        table = pa.Table.from_pylist(self._waiting, schema=schema())
        name = f"part-{time.time_ns()}-{os.getpid()}-{self._n:06d}.parquet"
        tmp = self.parts / f".{name}.tmp"
        pq.write_table(table, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.parts / name)
        self._n += 1
        self._waiting.clear()
        self._last = time.monotonic()

    def join(self) -> list[dict]:
        """All rows into ``rows.parquet`` (written whole, then the parts removed); returns them without their result
        documents (the report's rows)."""
        self.flush()
        t = self.table()
        parts = sorted(self.parts.glob("part-*.parquet"))
        if parts or not (self.out / "rows.parquet").exists():
            _, pq = _pa()
            tmp = self.out / ".rows.parquet.tmp"
            pq.write_table(t, tmp)
            os.replace(tmp, self.out / "rows.parquet")
            for p in parts:
                p.unlink()
        return t.drop_columns(["document"]).to_pylist()

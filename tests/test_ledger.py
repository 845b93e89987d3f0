"""The ledger on a real SQLite file, and the watcher's name filter."""

import sqlite3

import pytest

from monitor.config import ConfigError, WatchSection, parse_config
from monitor.daemon.watcher import wanted
from monitor.ledger import SCHEMA_VERSION, Ledger, LedgerError


def test_same_content_is_one_row_changed_content_a_new_one(tmp_path):
    lg = Ledger(tmp_path / "l.sqlite")
    a, created = lg.record("/x/a.tif", 10, 1, "aa")
    assert created and a.state == "pending"
    again, created = lg.record("/x/a.tif", 10, 1, "aa")
    assert not created and again.id == a.id
    b, created = lg.record("/x/a.tif", 11, 2, "bb")
    assert created and b.id > a.id
    assert [r.id for r in lg.pending(10)] == [a.id, b.id]


def test_rows_survive_reopening_and_done_rows_are_final(tmp_path):
    path = tmp_path / "l.sqlite"
    lg = Ledger(path)
    r, _ = lg.record("/x/a.tif", 10, 1, "aa")
    assert lg.start(r.id) == 1
    lg.finish(r.id, verdict="ok", alarm=False, coverage=0.0, n_defects=0, largest_area=0, max_score=1.0,
              score_seconds=0.5, model_id="m")
    lg.fail(r.id, "internal", "late failure must not overwrite a result")
    lg.close()
    lg = Ledger(path)
    row = lg.get(r.id)
    assert row.state == "done" and row.verdict == "ok" and row.error is None and row.e2e_seconds >= 0
    assert lg.pending(10) == [] and lg.totals()["done"] == {"ok": 1}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_results_newest_first_by_verdict_and_time_window(tmp_path):
    lg = Ledger(tmp_path / "l.sqlite")
    ids = {}
    for i, (name, outcome) in enumerate([("a", "ok"), ("b", "defect"), ("c", "failed"), ("d", "pending"),
                                         ("e", "no-threshold"), ("f", "defect")]):
        row, _ = lg.record(f"/x/{name}.tif", 10, 1, name, seen_at=1000.0 + 10 * i)
        ids[name] = row.id
        if outcome == "failed":
            lg.fail(row.id, "corrupt", "bad")
        elif outcome != "pending":
            lg.finish(row.id, verdict=outcome, alarm=outcome == "defect", coverage=0.1, n_defects=1,
                      largest_area=5, max_score=1.0, score_seconds=0.1, model_id="m")
    names = lambda rows: [r.path[3] for r in rows]  # noqa: E731
    assert names(lg.results(10)) == ["f", "e", "d", "c", "b", "a"]
    assert names(lg.results(2)) == ["f", "e"]
    assert names(lg.results(10, "defect")) == ["f", "b"]
    assert names(lg.results(10, "ok")) == ["a"] and names(lg.results(10, "no-threshold")) == ["e"]
    assert names(lg.results(10, "failed")) == ["c"] and names(lg.results(10, "pending")) == ["d"]
    assert names(lg.results(10, since=1010.0, until=1030.0)) == ["c", "b"]  # [since, until)
    assert names(lg.results(10, "defect", since=1020.0)) == ["f"]
    with pytest.raises(ValueError, match="verdict must be one of"):
        lg.results(10, "bogus")
    assert lg.neighbours(ids["c"]) == (ids["b"], ids["d"])
    assert lg.neighbours(ids["a"]) == (None, ids["b"]) and lg.neighbours(ids["f"]) == (ids["e"], None)


def test_a_file_that_is_not_a_ledger_is_refused(tmp_path):
    p = tmp_path / "l.sqlite"
    p.write_text("not a database, just text that is long enough to have a header" * 20)
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        Ledger(p)


@pytest.mark.parametrize("name, ok", [
    ("a.tif", True), ("A.TIF", True), ("b.tiff", True), ("c.png", True), ("d.jpg", False),
    (".hidden.tif", False), ("a.tif.tmp", False), ("a.tif.part", False), ("~a.tif", False), ("notes.txt", False),
])
def test_watched_names(name, ok):
    assert wanted(name, WatchSection()) is ok


def test_output_inside_the_export_folder_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="must not lie inside the export folder"):
        parse_config({"watch": {"dir": str(tmp_path)}, "output": {"ledger": str(tmp_path / "sub" / "l.sqlite")}})


def _scored(lg, path, verdict, sha="s" * 64):
    r, _ = lg.record(path, 10, 1, sha)
    lg.start(r.id)
    return lg.finish(r.id, verdict=verdict, alarm=verdict == "defect", coverage=0.01, n_defects=1, largest_area=5,
                     max_score=1.0, score_seconds=0.1, model_id="m")


def test_labels_are_kept_beside_the_result_the_last_one_counts(tmp_path):
    from monitor.ledger import LabelError

    lg = Ledger(tmp_path / "l.sqlite")
    d = _scored(lg, "/x/a.tif", "defect")
    ok = _scored(lg, "/x/b.tif", "ok", "t" * 64)
    pending, _ = lg.record("/x/c.tif", 10, 1, "u" * 64)
    lg.label(d.id, "false_alarm", "ana", "dust")
    lg.label(d.id, "confirmed", "ben", "", "web")  # changed mind: both kept, the last one counts
    lg.label(ok.id, "confirmed", "ana", "a missed bead")  # a defect the monitor did not alarm on
    for args, says in (((ok.id, "false_alarm", "ana"), "raised no alarm"), ((pending.id, "confirmed", "ana"),
                       "not scored"), ((d.id, "maybe", "ana"), "must be one of"), ((d.id, "confirmed", " "), "who"),
                       ((9999, "confirmed", "ana"), "no such result")):
        with pytest.raises(LabelError, match=says):
            lg.label(*args)
    assert [x.kind for x in lg.labels(d.id)] == ["false_alarm", "confirmed"]
    cur = lg.current_labels()
    assert {k: (v.kind, v.who, v.source) for k, v in cur.items()} == {d.id: ("confirmed", "ben", "web"),
                                                                       ok.id: ("confirmed", "ana", "cli")}
    assert lg.label_counts() == {"false_alarm": 1, "confirmed": 2}
    assert lg.get(d.id) == d  # the result row is never changed
    assert lg.find(str(d.id)) == d and lg.find("/x/a.tif") == d and lg.find("b.tif") == lg.get(ok.id)
    _scored(lg, "/y/a.tif", "ok", "v" * 64)
    with pytest.raises(LookupError, match="several folders"):
        lg.find("a.tif")


def test_a_version_1_ledger_is_upgraded_in_place(tmp_path):
    path = tmp_path / "l.sqlite"
    lg = Ledger(path)
    d = _scored(lg, "/x/a.tif", "defect")
    lg.close()
    with sqlite3.connect(path) as db:  # what 0.2.0 wrote: no labels table, user_version 1
        db.execute("DROP TABLE labels")
        db.execute("PRAGMA user_version=1")
    lg = Ledger(path)
    assert lg.get(d.id) == d and lg.current_labels() == {}
    lg.label(d.id, "confirmed", "ana")
    lg.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_version_2_ledger_is_upgraded_in_place_and_still_scores_every_image(tmp_path):
    """0.4.0's ledger: no meta table. It gets one, keeps its rows and labels, and, since it is not new, its
    backlog moment is 0: every image in the folder that it does not know is scored, as before."""
    path = tmp_path / "l.sqlite"
    lg = Ledger(path)
    d = _scored(lg, "/x/a.tif", "defect")
    lg.label(d.id, "confirmed", "ana")
    lg.close()
    with sqlite3.connect(path) as db:  # what 0.4.0 wrote
        db.execute("DROP TABLE meta")
        db.execute("PRAGMA user_version=2")
    lg = Ledger(path)
    assert lg.get(d.id) == d and set(lg.current_labels()) == {d.id}
    assert lg.backlog_before(24 * 3600)[::2] == (0.0, False)
    lg.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3


@pytest.mark.parametrize("backlog, want", [(None, 0.0), (0.0, 1e6), (3600.0, 1e6 - 3600.0)])
def test_a_new_ledger_keeps_the_moment_of_its_backlog(tmp_path, backlog, want):
    lg = Ledger(tmp_path / "l.sqlite")
    assert lg.backlog_before(backlog, now=1e6) == (want, 1e6, want > 0)
    _scored(lg, "/x/a.tif", "ok")
    assert lg.backlog_before(7 * 86400, now=5000.0) == (want, 1e6, False)  # kept, whatever the setting says now
    lg.close()
    assert Ledger(tmp_path / "l.sqlite").backlog_before(None) == (want, 1e6, False)


class _Plans:
    """The ledger's connection, recording the query plan of every SELECT it runs (``EXPLAIN QUERY PLAN``)."""

    def __init__(self, db):
        self.db, self.plans = db, []

    def execute(self, sql, args=()):
        if sql.lstrip().upper().startswith("SELECT"):
            self.plans.append(" / ".join(r[3] for r in self.db.execute("EXPLAIN QUERY PLAN " + sql, args)))
        return self.db.execute(sql, args)

    def __getattr__(self, name):
        return getattr(self.db, name)


YEAR_INDEXES = ("images_alarm", "images_overlay", "images_model")


def test_a_ledger_made_before_the_year_indexes_gets_them_at_its_next_open_and_its_queries_use_them(tmp_path):
    """A ledger of the current schema written before images_alarm, images_overlay and images_model existed (as 0.4.0
    left it): the next open makes them, keeps every row, and the start-up's queries and `monitor history --alarms`
    read them instead of the whole table (bench/year.py: 0.2 s each on a year of images before)."""
    path = tmp_path / "l.sqlite"
    lg = Ledger(path)
    ok = _scored(lg, "/x/ok.tif", "ok")
    r, _ = lg.record("/x/d.tif", 10, 1, "d" * 64)
    d = lg.finish(r.id, verdict="defect", alarm=True, coverage=0.2, n_defects=2, largest_area=50, max_score=30.0,
                  score_seconds=0.2, model_id="m", overlay=str(tmp_path / "d-2.png"),
                  result_json='{"score_level": 9.5}')
    f, _ = lg.record("/x/f.tif", 10, 1, "f" * 64)
    f = lg.fail(f.id, "corrupt", "bad")
    lg.label(d.id, "false_alarm", "ana")
    lg.close()
    with sqlite3.connect(path) as db:
        for name in YEAR_INDEXES:
            db.execute(f"DROP INDEX {name}")
        before = db.execute("SELECT * FROM images ORDER BY id").fetchall()
    lg = Ledger(path)
    with sqlite3.connect(path) as db:
        names = {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert set(YEAR_INDEXES) <= names
        assert db.execute("SELECT * FROM images ORDER BY id").fetchall() == before
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert [lg.get(x.id) for x in (ok, d, f)] == [ok, d, f] and set(lg.current_labels()) == {d.id}
    lg._db = spy = _Plans(lg._db)
    assert lg.totals()["alarms"] == 1 and "images_alarm" in spy.plans[3]
    spy.plans.clear()
    assert [x.id for x in lg.history(alarms_only=True)] == [d.id] and "images_alarm" in spy.plans[0]
    spy.plans.clear()
    assert lg.outputs() == [(d.id, d.finished_at, d.overlay)] and "images_overlay" in spy.plans[0]
    spy.plans.clear()
    assert lg.recent_levels("another model", 50) == [] and "images_model" in spy.plans[0]
    lg.close()


def test_the_time_windows_are_exact_when_the_clock_was_set_back(tmp_path):
    """The results page and `monitor history` bound their scans by the ids of the window's rows; rows recorded
    after the clock was set back (seen_at out of id order) are still in exactly the windows they belong to."""
    lg = Ledger(tmp_path / "l.sqlite")
    seen = [1000, 1010, 1020, 1030, 995, 1005, 1040, 1050, 1015, 1060]  # the clock set back twice
    rows = []
    for i, t in enumerate(seen):
        r, _ = lg.record(f"/x/{i}.tif", 10, i, f"{i:064d}", seen_at=float(t))
        if i % 3 == 0:
            r = lg.finish(r.id, verdict="defect" if i % 2 else "ok", alarm=bool(i % 2), coverage=0.1, n_defects=1,
                          largest_area=5, max_score=1.0, score_seconds=0.1, model_id="m")
        elif i % 3 == 1:
            r = lg.fail(r.id, "corrupt", "bad")
        rows.append(r)
    lg._db = spy = _Plans(lg._db)
    edges = [None, 990.0, 1000.0, 1005.0, 1012.0, 1030.0, 1055.0, 2000.0]
    for verdict in (None, "ok", "defect", "failed", "pending"):
        for since in edges:
            for until in edges:
                def inside(r):
                    state = {"failed": "failed", "pending": "pending", None: r.state}.get(verdict, "done")
                    return (r.state == state and (verdict in (None, "failed", "pending") or r.verdict == verdict)
                            and (since is None or r.seen_at >= since) and (until is None or r.seen_at < until))
                want = sorted((r.id for r in lg.history() if inside(r)), reverse=True)
                assert [r.id for r in lg.results(50, verdict, since, until)] == want, (verdict, since, until)
                assert [r.id for r in lg.results(2, verdict, since, until)] == want[:2], (verdict, since, until)
    for since in edges:
        for alarms in (False, True):
            want = [r.id for r in rows if (since is None or r.seen_at >= since) and (not alarms or r.alarm == 1)]
            assert [r.id for r in lg.history(since, alarms)] == want, (since, alarms)
            assert [r.id for r in lg.history(since, alarms, limit=2)] == want[-2:], (since, alarms)
    assert any("images_seen" in p for p in spy.plans)  # the window's ids come from the index on seen_at
    lg.close()


def test_the_labels_of_more_results_than_sqlite_takes_as_parameters(tmp_path):
    """`monitor history` of a year asks for the labels of half a million results at once."""
    lg = Ledger(tmp_path / "l.sqlite")
    d = _scored(lg, "/x/a.tif", "defect")
    ok = _scored(lg, "/x/b.tif", "ok", "t" * 64)
    lg.label(d.id, "false_alarm", "ana")
    lg.label(ok.id, "confirmed", "ben")
    many = list(range(1, 600_001))
    assert {k: v.kind for k, v in lg.current_labels(many).items()} == {d.id: "false_alarm", ok.id: "confirmed"}
    assert set(lg.current_labels([ok.id, *range(10_000, 10_600)])) == {ok.id}
    assert set(lg.current_labels([d.id])) == {d.id} and lg.current_labels([]) == {}
    lg.close()


def test_an_unchecked_open_skips_the_full_check_only_when_it_changes_nothing(tmp_path):
    """`monitor history` and `monitor label` open the ledger without reading every page (0.7 s a year of images);
    a ledger that opening would change (not yet WAL, an older schema) is still checked first and left as it was."""
    path = tmp_path / "l.sqlite"
    lg = Ledger(path)
    for i in range(400):  # several pages of rows
        lg.record(f"/export/img{i:04d}_{'x' * 100}.tif", 1, i, f"{i:064d}")
    lg.close()
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=DELETE")
        page = db.execute("SELECT MAX(pageno) FROM dbstat WHERE name = 'images' AND pagetype = 'leaf'").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(path.read_bytes())
    data[(page - 1) * size:(page - 1) * size + 12] = b"\xff" * 12  # the header of a page of the table
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match="damaged|malformed"):
        Ledger(path, check=False)  # it would switch the journal to WAL: checked first
    assert path.read_bytes() == bytes(data)
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")
    with pytest.raises(LedgerError, match="damaged|malformed"):
        Ledger(path)
    lg = Ledger(path, check=False)  # nothing to change: opened; the damage shows where a query meets it
    with pytest.raises(sqlite3.DatabaseError, match="malformed"):
        lg.history()
    lg.close()

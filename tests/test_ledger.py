"""The ledger on a real SQLite file, and the watcher's name filter."""

import sqlite3

import pytest

from monitor.config import ConfigError, WatchSection, parse_config
from monitor.ledger import Ledger, LedgerError
from monitor.watcher import wanted


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
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2

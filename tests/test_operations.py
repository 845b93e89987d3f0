"""The operators' side against the real tools: Alertmanager routing and inhibition, the Grafana dashboard JSON, and a
real Prometheus scraping a real daemon that scores synthetic images (every dashboard and alert expression
evaluated through Prometheus' HTTP API)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from monitor.daemon.metrics import Metrics
from monitor.model.synth import defective_image, fiber_mat
from tests.conftest import SHAPE
from tests.daemon import Daemon, free_port, png_bytes, wait_for, write_renamed
from tests.test_prometheus import OPS, RULES, _needs, rules

AM_CONFIG = OPS / "alertmanager" / "alertmanager.yml"
DASHBOARD = OPS / "grafana" / "dashboards" / "sem-line-monitor.json"


def _get(url: str, timeout: float = 5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read().decode())


def _post(url: str, data) -> None:
    req = urllib.request.Request(url, json.dumps(data).encode(), {"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=5).read()


def _up(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=1).read()
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------------- alertmanager


def _alertmanager(*args: str) -> list[str]:
    """The command that runs the real Alertmanager. Debian's build reads its default notification template from
    /usr/share/prometheus/alertmanager (built in, no flag); `make tools` unpacks the package into .tools/ instead of
    installing it, so that folder is absent on the host: the Alertmanager then runs in a private mount namespace in
    which the unpacked usr/share is mounted over /usr/share. Nothing on the host changes."""
    binary = Path(shutil.which("prometheus-alertmanager") or _needs("alertmanager"))
    if Path("/usr/share/prometheus/alertmanager/default.tmpl").exists():
        return [str(binary), *args]
    share = binary.resolve().parent.parent / "share"
    if not (share / "prometheus" / "alertmanager" / "default.tmpl").exists():
        pytest.fail(f"no default.tmpl for {binary}: run `make tools`")
    unshare = shutil.which("unshare") or pytest.fail("unshare (util-linux) not found")
    script = 'mount --bind "$0" /usr/share && exec "$@"'
    return [unshare, "--mount", "--map-root-user", "sh", "-c", script, str(share), str(binary), *args]



def test_alertmanager_config_passes_amtool():
    r = subprocess.run([_needs("amtool"), "check-config", str(AM_CONFIG)], capture_output=True, text=True)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def _route(**labels) -> str:
    r = subprocess.run([_needs("amtool"), "config", "routes", "test", f"--config.file={AM_CONFIG}",
                        *[f"{k}={v}" for k, v in labels.items()]], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_every_alert_reaches_the_right_receiver():
    want = {"operators": {"critical": "operators-urgent", "warning": "operators"}, "maintenance": "maintenance",
            "microscope": "microscope", "process": "process"}
    table = {}
    for name, rule in rules().items():
        lab = rule["labels"]
        got = _route(alertname=name, line="line1", **lab)
        exp = want[lab["team"]][lab["severity"]] if lab["team"] == "operators" else want[lab["team"]]
        table[name] = got
        assert got == exp, (name, lab, got)
    assert table["SemDefectCoverageHigh"] == "operators-urgent"
    assert table["SemMonitorDown"] == "maintenance"
    assert table["SemImageMismatch"] == table["SemScoreDrift"] == "operators"  # warnings: e-mail, not the display
    assert table["SemImageMostlyAbnormal"] == "operators-urgent"  # it may be a film over the whole mat: look now
    assert table["SemAcquisitionProblem"] == "microscope"  # the people who run the SEM, not the line's operators
    assert table["SemFibreDiameterOutOfControl"] == "process"  # the process engineers steer the fibre diameter


def test_every_inhibition_names_existing_alerts():
    names = set(rules())
    for inhibit in yaml.safe_load(AM_CONFIG.read_text())["inhibit_rules"]:
        for m in inhibit["source_matchers"] + inhibit["target_matchers"]:
            key, _, value = m.partition("=")
            assert key == "alertname" and value.strip('"') in names, m
        assert inhibit["equal"] in (["line"], ["instance"]), inhibit


@contextlib.contextmanager
def _real_alertmanager(tmp_path):
    """A real Alertmanager with the repository's configuration: yields its base URL."""
    port = free_port()
    log = tmp_path / "alertmanager.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_alertmanager(f"--config.file={AM_CONFIG}", f"--storage.path={tmp_path}",
                                              f"--web.listen-address=127.0.0.1:{port}",
                                              "--cluster.listen-address=",  # no peers
                                              "--log.level=warn"), stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready():
            if proc.poll() is not None:
                raise AssertionError(f"alertmanager exited ({proc.returncode}): {log.read_text(errors='replace')}")
            return _up(f"{base}/-/ready")

        wait_for(ready, 30, "alertmanager ready")
        yield base
    finally:
        proc.terminate()
        proc.wait(10)


def _alert(name: str, **labels) -> dict:
    return {"labels": {"alertname": name, **labels, **rules()[name]["labels"]}}


def test_monitor_down_inhibits_no_image_in_a_real_alertmanager(tmp_path):
    with _real_alertmanager(tmp_path) as base:
        one, two = {"instance": "linepc:9808"}, {"instance": "linepc:9809"}
        alerts = [{"labels": {"alertname": "SemMonitorDown", **one, **rules()["SemMonitorDown"]["labels"]}},
                  {"labels": {"alertname": "SemNoImageReceived", "line": "line1", **one,
                              **rules()["SemNoImageReceived"]["labels"]}},
                  {"labels": {"alertname": "SemNoImageReceived", "line": "line2", **two,
                              **rules()["SemNoImageReceived"]["labels"]}}]
        _post(f"{base}/api/v2/alerts", alerts)

        def states():
            # the inhibitor learns of the source alert on a goroutine of its own, after the API has taken it: a
            # read right after the post can show the target not (yet) inhibited; wait for it, then check the rest
            got = _get(f"{base}/api/v2/alerts")
            st = {(a["labels"]["alertname"], a["labels"].get("line", "line1")): a["status"] for a in got}
            if len(got) != 3 or not st[("SemNoImageReceived", "line1")]["inhibitedBy"]:
                return None
            return st

        st = wait_for(states, 20, "three alerts, line1's SemNoImageReceived inhibited by its SemMonitorDown")
        assert not st[("SemNoImageReceived", "line2")]["inhibitedBy"]  # another line is not
        assert not st[("SemMonitorDown", "line1")]["inhibitedBy"]


def test_mismatch_inhibits_score_drift_of_its_line_in_a_real_alertmanager(tmp_path):
    """A changeover on line1 (images of another size) moves its scores too: its drift alert is held back, while
    line2's drift alert, with no mismatch there, is not."""
    with _real_alertmanager(tmp_path) as base:
        _post(f"{base}/api/v2/alerts", [_alert("SemImageMismatch", line="line1", reason="size"),
                                        _alert("SemScoreDrift", line="line1"),
                                        _alert("SemScoreDrift", line="line2")])

        def states():  # the inhibitor learns of the source on its own goroutine: wait for it (see above)
            got = _get(f"{base}/api/v2/alerts")
            st = {(a["labels"]["alertname"], a["labels"]["line"]): a["status"] for a in got}
            if len(got) != 3 or not st[("SemScoreDrift", "line1")]["inhibitedBy"]:
                return None
            return st

        st = wait_for(states, 20, "three alerts, line1's SemScoreDrift inhibited by its SemImageMismatch")
        assert st[("SemScoreDrift", "line1")]["state"] == "suppressed"
        assert not st[("SemScoreDrift", "line2")]["inhibitedBy"] and st[("SemScoreDrift", "line2")]["state"] == "active"
        assert not st[("SemImageMismatch", "line1")]["inhibitedBy"]


# ------------------------------------------------------------------------------------------------------ grafana


def _dashboard_exprs(dash: dict) -> list[str]:
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def test_dashboard_is_valid_grafana_json():
    dash = json.loads(DASHBOARD.read_text())
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    assert dash["uid"] == "sem-line-monitor" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids)
    names = {v["name"]: v for v in dash["templating"]["list"]}
    assert names["datasource"]["type"] == "datasource" and names["datasource"]["query"] == "prometheus"
    assert names["line"]["type"] == "query" and "line" in names["line"]["definition"]
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["gridPos"]["w"] > 0 and p["gridPos"]["h"] > 0
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            assert '$line' in t["expr"], (p["title"], t["expr"])
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for want in ("coverage", "alarm", "verdict", "failures", "scoring", "end-to-end", "queue", "last image",
                 "up", "model", "results page", "false-alarm rate per shift", "mismatched images", "score drift"):
        assert want in titles, want
    cells = {}  # no two panels overlap, none is wider than the 24-column grid
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for cell in ((x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])):
            assert cell not in cells, (p["title"], cells.get(cell))
            cells[cell] = p["title"]


def _panel(dash: dict, title: str) -> dict:
    return next(p for p in dash["panels"] if p["title"].lower().startswith(title))


def test_dashboard_quality_panels_match_the_alerts():
    dash = json.loads(DASHBOARD.read_text())
    shift = _panel(dash, "false-alarm rate per shift")
    assert shift["interval"] == "8h" and shift["fieldConfig"]["defaults"]["unit"] == "percentunit"
    assert shift["fieldConfig"]["defaults"]["custom"]["drawStyle"] == "bars"
    exprs = [t["expr"] for t in shift["targets"]]
    assert any('kind="false_alarm"' in e for e in exprs) and all("[8h]" in e and "clamp_min(" in e for e in exprs)
    desc = shift["description"].lower()
    assert "when it is given" in desc and "relabel" in desc and "counts again" in desc
    assert any("monitor_mismatches_total" in t["expr"] and "reason" in t["expr"]
               for t in _panel(dash, "mismatched images")["targets"])
    drift = _panel(dash, "score drift")
    assert {m for t in drift["targets"] for m in re.findall(r"monitor_drift_\w+", t["expr"])} == {
        "monitor_drift_ratio", "monitor_drift_images"}
    limit = float(re.search(r"monitor_drift_ratio\) > ([0-9.]+)", rules()["SemScoreDrift"]["expr"])[1])
    steps = drift["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps if s["value"] is not None] == [limit]  # the line drawn is the alert's limit
    assert drift["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"
    for name in ("SemImageMismatch", "SemScoreDrift"):  # each alert opens its own panel
        panel = int(rules()[name]["annotations"]["dashboard"].split("viewPanel=")[1])
        assert panel == (_panel(dash, "mismatched images") if name == "SemImageMismatch" else drift)["id"], name


# --------------------------------------------------------------------------------------- real Prometheus, e2e


@pytest.fixture
def prometheus(tmp_path):
    binary = _needs("prometheus")

    def start(target_port: int, scrape_interval: str = "1s", ca_file: str = ""):
        port = free_port()
        job = {"job_name": "sem-monitor", "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}
        if ca_file:  # the endpoint speaks TLS with this (self-signed) certificate
            job.update(scheme="https", tls_config={"ca_file": ca_file}, scrape_timeout="1s")
        cfg = {"global": {"scrape_interval": scrape_interval, "evaluation_interval": "1s"},
               "rule_files": [str(RULES)], "scrape_configs": [job]}  # the monitor sets `line` (service.line)
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}",
                                 "--log.level=warn"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proc)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _up(f"{base}/-/ready"), 60, "prometheus ready")
        return base

    procs: list[subprocess.Popen] = []
    yield start
    for p in procs:
        p.terminate()
        p.wait(20)


def _query(base: str, expr: str) -> list:
    r = _get(f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr}))
    assert r["status"] == "success", (expr, r)
    return r["data"]["result"]


def _panel_query(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard expression as Grafana would send it for every line ($__rate_interval: >= 4 scrape intervals)."""
    return expr.replace("$line", ".*").replace("$__rate_interval", rate_interval)


def _alarm_panel_expr() -> str:
    dash = json.loads(DASHBOARD.read_text())
    return next(p for p in dash["panels"] if p["title"] == "Alarm state")["targets"][0]["expr"]


def test_real_prometheus_scrapes_the_daemon_and_every_expression_returns_data(tmp_path, saved_model, prometheus):
    d = Daemon(tmp_path / "d", saved_model, alarm={"coverage_threshold": 0.005})
    d.start()
    try:
        base = prometheus(d.port)
        wait_for(lambda: _query(base, 'up{job="sem-monitor"} == 1'), 30, "first scrape")
        write_renamed(d.export, "clean.png", png_bytes(fiber_mat(SHAPE, seed=303)))
        write_renamed(d.export, "broken.tif", b"not an image")
        img, _ = defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=9)
        write_renamed(d.export, "defect.png", png_bytes(img))
        rows = d.wait_finished(3)
        assert [r["verdict"] for r in rows if r["state"] == "done"][-1] == "defect"

        def coverage_alert():
            got = _get(f"{base}/api/v1/alerts")["data"]["alerts"]
            return [a for a in got if a["labels"]["alertname"] == "SemDefectCoverageHigh"
                    and a["state"] in ("pending", "firing")]
        alert = wait_for(coverage_alert, 30, "SemDefectCoverageHigh in /api/v1/alerts")[0]
        assert alert["labels"]["line"] == "line1" and alert["labels"]["team"] == "operators"

        dash = json.loads(DASHBOARD.read_text())
        for expr in _dashboard_exprs(dash):
            q = _panel_query(expr)
            wait_for(lambda q=q: _query(base, q), 30, f"data for dashboard query {q}")
        # the quality panels on a line nobody has labelled yet, with no mismatch and a drift window still filling
        shift = _panel(dash, "false-alarm rate per shift")["targets"][0]["expr"]
        assert [(p["metric"]["line"], p["value"][1]) for p in _query(base, _panel_query(shift))] == [("line1", "0")]
        mismatched = _panel(dash, "mismatched images")["targets"][0]["expr"]
        assert {p["metric"]["reason"]: p["value"][1] for p in _query(base, _panel_query(mismatched))} == {
            r: "0" for r in ("size", "bit_depth", "pixel_size", "coverage", "exposure", "focus", "noise")}
        assert [p["value"][1] for p in _query(base, "monitor_drift_ratio")] == ["NaN"]  # under drift.min_images
        for name in ("SemScoreDrift", "SemImageMismatch", "SemImageMostlyAbnormal", "SemAcquisitionProblem"):
            assert not _query(base, rules()[name]["expr"]), name
        values = _get(f"{base}/api/v1/label/line/values?" + urllib.parse.urlencode({"match[]": "monitor_build_info"}))
        assert "line1" in values["data"]  # the dashboard's line variable

        for name, rule in rules().items():
            _query(base, rule["expr"])  # every alert expression is valid against the live data
            for metric in set(re.findall(r"\b(monitor_[a-z_]+|up)\b", rule["expr"])):
                if metric.endswith(("_bucket",)) or metric == "monitor_scoring_seconds":
                    metric = "monitor_scoring_seconds_bucket"
                assert _query(base, metric), (name, metric)  # ... and every series it reads exists
        assert _query(base, rules()["SemImagesFailing"]["expr"])  # the broken file shows up as a failure
    finally:
        assert d.stop() == 0


def test_a_defect_image_cleared_before_the_next_scrape_still_fires_the_defect_alert(tmp_path, saved_model,
                                                                                     prometheus):
    """A line exporting images every few seconds: one defective image followed within a second by clean ones (the
    first clean one clears the alarm gauge, alarm.clear_after 1) between two scrapes 5 s apart. The defect alert and
    the dashboard's alarm panel read the alarm counter, so they show it anyway; the alert links to the results
    page."""
    d = Daemon(tmp_path / "d", saved_model, alarm={"coverage_threshold": 0.005, "clear_after": 1},
               web={"external_url": "https://linepc-1.example:9880/"})
    d.start()
    try:
        base = prometheus(d.port, scrape_interval="5s")
        wait_for(lambda: _query(base, 'up{job="sem-monitor"} == 1'), 30, "first scrape")
        img, _ = defective_image(SHAPE, kinds=("bead", "film", "clot"), seed=9)
        write_renamed(d.export, "defect.png", png_bytes(img))
        for i in range(3):
            write_renamed(d.export, f"clean{i}.png", png_bytes(fiber_mat(SHAPE, seed=400 + i)))
        rows = d.wait_finished(4)
        assert [r["verdict"] for r in rows] == ["defect", "ok", "ok", "ok"], rows
        assert rows[1]["finished_at"] - rows[0]["finished_at"] < 1.0  # cleared within a second
        assert Daemon.value(d.scrape(), "monitor_alarm") == 0

        def firing():
            got = _get(f"{base}/api/v1/alerts")["data"]["alerts"]
            return [a for a in got if a["labels"]["alertname"] == "SemDefectCoverageHigh" and a["state"] == "firing"]
        alert = wait_for(firing, 30, "SemDefectCoverageHigh firing")[0]
        assert alert["labels"]["line"] == "line1"
        assert alert["annotations"]["results"] == "https://linepc-1.example:9880/?verdict=defect"
        panel = _query(base, _panel_query(_alarm_panel_expr()))
        assert [(p["metric"]["line"], p["value"][1]) for p in panel] == [("line1", "1")]
        # how often the gauge itself was seen raised (usually never: it stood for a fraction of a second)
        seen = _query(base, "max_over_time(monitor_alarm[5m])")
        print("monitor_alarm as scraped, max over 5 min:", seen[0]["value"][1] if seen else None)
    finally:
        assert d.stop() == 0


def test_idle_connections_do_not_blind_a_real_prometheus_scraping_the_tls_endpoint(tmp_path, prometheus):
    """Clients on the line's network that connect and send nothing (no TLS handshake, no request) must not stop
    the scrapes: the handshake runs in each connection's thread, and one address gets a few connections only."""
    if shutil.which("openssl") is None:
        pytest.fail("openssl not installed (Debian package openssl)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    metrics = Metrics(line="tls-line")
    port = metrics.serve("127.0.0.1", 0, str(cert), str(key))
    idle = []
    try:
        for _ in range(20):  # from another address than Prometheus' (one address may hold 8, the rest are closed)
            idle.append(socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.2", 0)))
        base = prometheus(port, ca_file=str(cert))

        def scraped():
            r = _query(base, 'up{job="sem-monitor"}')
            return r and r[0]["value"][1] == "1" and _query(base, 'monitor_images_received_total{line="tls-line"}')
        wait_for(scraped, 30, "a successful scrape while 20 idle connections are open")
        for _ in range(3):  # and it goes on succeeding: every scrape, not a lucky one
            time.sleep(1.2)
            assert _query(base, 'up{job="sem-monitor"}')[0]["value"][1] == "1"
    finally:
        for s in idle:
            s.close()
        metrics.close()

"""Prometheus configuration and alert rules, checked with the real promtool; every alert has unit tests that show
it firing when it should and silent when it should not (including its `for:` duration)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from tests.conftest import ROOT

OPS = ROOT / "ops"
RULES = OPS / "prometheus" / "sem-monitor.rules.yml"
DASHBOARD_JSON = OPS / "grafana" / "dashboards" / "sem-line-monitor.json"
L = {"job": "sem-monitor", "instance": "127.0.0.1:9808", "line": "line1"}


def _needs(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:  # the project's setup (make test) installs it; its absence is a failure, not a skip
        pytest.fail(f"{tool} not installed: run `make tools` (unpacks Debian packages prometheus, "
                    "prometheus-alertmanager into .tools/)")
    return path


def _sel(name: str, **labels) -> str:
    """A series of the monitor (``line`` set: it labels its own series); ``line=None`` for ``up``, which only
    carries the target's job and instance."""
    lab = {k: v for k, v in {**L, **labels}.items() if v is not None}
    return name + "{" + ",".join(f'{k}="{v}"' for k, v in lab.items()) + "}"


TARGET = {k: v for k, v in L.items() if k != "line"}  # what `up` and so SemMonitorDown carry


def rules() -> dict[str, dict]:
    data = yaml.safe_load(RULES.read_text())
    return {r["alert"]: r for g in data["groups"] for r in g["rules"] if "alert" in r}


WEB = "http://linepc-1:9880"  # the results page a monitor announces in monitor_web_info


def expected(alert: str, web: str = "", named: str = "", value: str = "", **labels) -> dict:
    """The alert as promtool reports it: its labels, and its annotations rendered for ``labels`` (``web``: the
    external URL the monitor announced, which the ``results`` annotations link to, each with its own verdict
    filter; ``value``: the alert's value as its annotations print it)."""
    r = rules()[alert]
    ann = {}
    for k, v in r.get("annotations", {}).items():
        for name, val in labels.items():
            v = v.replace("{{ $labels.%s }}" % name, val)
        v = v.replace('{{ $value | printf "%.2f" }}', value)
        if k == "results":
            verdict = re.fullmatch(r"\{\{ with query .*\{\{ \. \}\}/\?verdict=([a-z-]+)\{\{ end \}\}\{\{ end \}\}", v)
            assert verdict, (alert, v)  # the results page of the line, filtered
            v = f"{web}/?verdict={verdict[1]}" if web else ""
        # the line a down monitor's description looks up from its last build info: " (line X)" when one is known
        v = re.sub(r"\{\{ with query .*\{\{ end \}\}\{\{ end \}\}", f" (line {named})" if named else "", v)
        ann[k] = v
    return {"exp_labels": {**labels, **r["labels"]}, "exp_annotations": ann}


HIST = {  # all observations in the (2, 5] s bucket: p95 ~ 4.85 s; or all in (0, 1]: p95 ~ 0.95 s
    "slow": {"1.0": "0+0x40", "2.0": "0+0x40", "5.0": "0+10x40", "+Inf": "0+10x40"},
    "fast": {"1.0": "0+10x40", "2.0": "0+10x40", "5.0": "0+10x40", "+Inf": "0+10x40"},
}


def _hist(kind: str) -> list[dict]:
    return [{"series": _sel("monitor_scoring_seconds_bucket", le=le), "values": v} for le, v in HIST[kind].items()] + [
        {"series": _sel("monitor_budget_seconds"), "values": "2x40"}]


# (name, input series, [(eval time, alert, [expected alerts])]); each alert appears firing and silent
CASES = [
    ("a defect image between two scrapes: the gauge never shows 1, the counter rises, the alert fires",
     [{"series": _sel("monitor_alarm"), "values": "0x40"},
      {"series": _sel("monitor_alarms_total"), "values": "3 3 3 3 4x36"},
      {"series": _sel("monitor_web_info", external_url=WEB), "values": "1x40"}],
     [("45s", "SemDefectCoverageHigh", []), ("1m", "SemDefectCoverageHigh", [("line", "line1"), ("web", WEB)]),
      ("1m30s", "SemDefectCoverageHigh", [("line", "line1"), ("web", WEB)]),
      ("2m15s", "SemDefectCoverageHigh", []), ("9m", "SemDefectCoverageSustained", [])], "15s"),
    ("a defect image every 75 s, each cleared by a clean one before the next scrape: sustained after 10 min",
     [{"series": _sel("monitor_alarm"), "values": "0x60"},
      {"series": _sel("monitor_alarms_total"), "values": " ".join(str(i // 5) for i in range(60))}],
     [("2m", "SemDefectCoverageHigh", [("line", "line1")]), ("11m", "SemDefectCoverageSustained", []),
      ("11m30s", "SemDefectCoverageSustained", [("line", "line1")])], "15s"),  # first defect image at 75 s
    ("an alarm that stays standing (no clean image since): firing throughout, sustained after 10 min, cleared",
     [{"series": _sel("monitor_alarm"), "values": "0 0 1x14 0x5"},
      {"series": _sel("monitor_alarms_total"), "values": "0 0 1x19"}],
     [("1m", "SemDefectCoverageHigh", []), ("2m", "SemDefectCoverageHigh", [("line", "line1")]),
      ("9m", "SemDefectCoverageHigh", [("line", "line1")]),
      ("11m", "SemDefectCoverageSustained", []), ("12m", "SemDefectCoverageSustained", [("line", "line1")]),
      ("17m", "SemDefectCoverageSustained", []), ("17m", "SemDefectCoverageHigh", [])]),
    ("monitor down for 2 min",
     [{"series": _sel("up", line=None), "values": "1 1 0 0 0 0"}],
     [("1m", "SemMonitorDown", []), ("3m", "SemMonitorDown", []), ("4m", "SemMonitorDown", [("target", None)]),
      ("4m", "SemMonitorNotScraped", [])]),
    ("monitor down for 2 min, its line named from the build info it exported while it was up",
     [{"series": _sel("up", line=None), "values": "1 1 0 0 0 0"},
      {"series": _sel("monitor_build_info", version="0.2.0"), "values": "1 1"}],
     [("4m", "SemMonitorDown", [("target", "line1")])]),
    ("no monitor scraped at all",
     [{"series": 'up{job="node",instance="x:9100"}', "values": "1x10"}],
     [("4m", "SemMonitorNotScraped", []), ("6m", "SemMonitorNotScraped", [("job", "sem-monitor")])]),
    ("no image for 3x the expected interval while the line runs, silent once it stopped for 2 h",
     [{"series": _sel("monitor_last_received_timestamp_seconds"), "values": "60x300"},
      {"series": _sel("monitor_expected_interval_seconds"), "values": "300x300"},
      {"series": _sel("monitor_images_received_total"), "values": "1 2 2x300"}],
     [("10m", "SemNoImageReceived", []), ("20m", "SemNoImageReceived", []),
      ("23m", "SemNoImageReceived", [("full", None)]), ("200m", "SemNoImageReceived", [])]),
    ("scoring p95 over the budget for 10 min", _hist("slow"),
     [("5m", "SemScoringOverBudget", []), ("12m", "SemScoringOverBudget", [("line", "line1")])]),
    ("scoring within the budget", _hist("fast"),
     [("20m", "SemScoringOverBudget", [])]),
    ("images failing",
     [{"series": _sel("monitor_images_failed_total", reason="corrupt"), "values": "0 0 0 1x30"}],
     [("2m", "SemImagesFailing", []), ("4m", "SemImagesFailing", [("line", "line1"), ("reason", "corrupt")]),
      ("25m", "SemImagesFailing", [])]),
    ("backlog growing for 10 min",
     [{"series": _sel("monitor_queue_depth"), "values": "0+3x40"}],
     [("10m", "SemBacklogGrowing", []), ("18m", "SemBacklogGrowing", [("line", "line1")])]),
    ("a large but steady backlog is no alert",
     [{"series": _sel("monitor_queue_depth"), "values": "25x40"}],
     [("25m", "SemBacklogGrowing", [])]),
    ("model changed, announced for 30 min",
     [{"series": _sel("monitor_model_info", model_id="aaaa", method="patch_dictionary"), "values": "1x10"},
      {"series": _sel("monitor_model_info", model_id="bbbb", method="patch_dictionary"), "values": "_x10 1x60"}],
     [("5m", "SemModelChanged", []), ("15m", "SemModelChanged", [("line", "line1")]),
      ("50m", "SemModelChanged", [])]),
    ("images of another recipe (size): a mismatch alert for that reason only, until 5 min after the last one",
     [{"series": _sel("monitor_mismatches_total", reason="size"), "values": "0 0 0 1 2 2x20"},
      {"series": _sel("monitor_mismatches_total", reason="coverage"), "values": "0x25"},
      {"series": _sel("monitor_web_info", external_url=WEB), "values": "1x25"}],
     [("2m", "SemImageMismatch", []),
      ("3m", "SemImageMismatch", [("line", "line1"), ("reason", "size"), ("web", WEB)]),
      ("8m", "SemImageMismatch", [("line", "line1"), ("reason", "size"), ("web", WEB)]),  # 4 min after the last
      ("10m", "SemImageMismatch", [])]),
    ("most of an image abnormal (reason coverage): the urgent alert, not the changeover warning",
     [{"series": _sel("monitor_mismatches_total", reason="coverage"), "values": "0 0 0 1x20"},
      {"series": _sel("monitor_mismatches_total", reason="size"), "values": "0x23"},
      {"series": _sel("monitor_web_info", external_url=WEB), "values": "1x23"}],
     [("2m", "SemImageMostlyAbnormal", []),
      ("3m", "SemImageMostlyAbnormal", [("line", "line1"), ("web", WEB)]),
      ("3m", "SemImageMismatch", []), ("5m", "SemImageMostlyAbnormal", [])]),
    ("no image mismatched: the counters stay at 0",
     [{"series": _sel("monitor_mismatches_total", reason=r), "values": "0x40"}
      for r in ("size", "bit_depth", "pixel_size", "coverage", "exposure", "focus", "noise")],
     [("30m", "SemImageMismatch", []), ("30m", "SemImageMostlyAbnormal", []), ("30m", "SemAcquisitionProblem", [])]),
    ("blurred images (reason focus): the microscope's alert, not the changeover warning, until 5 min after the last",
     [{"series": _sel("monitor_mismatches_total", reason="focus"), "values": "0 0 0 1 2 2x20"},
      {"series": _sel("monitor_mismatches_total", reason="size"), "values": "0x25"},
      {"series": _sel("monitor_web_info", external_url=WEB), "values": "1x25"}],
     [("2m", "SemAcquisitionProblem", []),
      ("3m", "SemAcquisitionProblem", [("line", "line1"), ("reason", "focus"), ("web", WEB)]),
      ("3m", "SemImageMismatch", []), ("3m", "SemImageMostlyAbnormal", []),
      ("8m", "SemAcquisitionProblem", [("line", "line1"), ("reason", "focus"), ("web", WEB)]),
      ("10m", "SemAcquisitionProblem", [])]),
    ("clean images score 1.6 x the validation images (20 in the window): drift after 30 min",
     [{"series": _sel("monitor_drift_ratio"), "values": "1.0x4 1.6x60"},
      {"series": _sel("monitor_drift_images"), "values": "20x65"},
      {"series": _sel("monitor_web_info", external_url=WEB), "values": "1x65"}],
     [("4m", "SemScoreDrift", []), ("34m", "SemScoreDrift", []),
      ("35m", "SemScoreDrift", [("line", "line1"), ("web", WEB), ("value", "1.60")])]),
    ("drift ratio over the limit but too few clean images in the window",
     [{"series": _sel("monitor_drift_ratio"), "values": "1.8x60"},
      {"series": _sel("monitor_drift_images"), "values": "19x60"}],
     [("45m", "SemScoreDrift", [])]),
    ("drift ratio just below the limit",
     [{"series": _sel("monitor_drift_ratio"), "values": "1.45x60"},
      {"series": _sel("monitor_drift_images"), "values": "50x60"}],
     [("45m", "SemScoreDrift", [])]),
    ("drift ratio NaN (fewer than drift.min_images clean images), whatever the image count says",
     [{"series": _sel("monitor_drift_ratio"), "values": " ".join(["NaN"] * 61)},
      {"series": _sel("monitor_drift_images"), "values": "30x60"}],
     [("45m", "SemScoreDrift", [])]),
    ("the fibre diameter steps up 8% (the chart's window mean), limits +-5%: the process alert after 5 min",
     [{"series": _sel("monitor_fibre_diameter_ratio"), "values": "1.0x10 1.08x30"},
      {"series": _sel("monitor_fibre_diameter_lower_limit_ratio"), "values": "0.95x40"},
      {"series": _sel("monitor_fibre_diameter_upper_limit_ratio"), "values": "1.05x40"},
      {"series": _sel("monitor_web_info", external_url=WEB), "values": "1x40"}],
     [("9m", "SemFibreDiameterOutOfControl", []), ("14m", "SemFibreDiameterOutOfControl", []),
      ("16m", "SemFibreDiameterOutOfControl", [("line", "line1"), ("web", WEB), ("value", "1.08")])]),
    ("the fibre diameter steps down 9%: the process alert after 5 min",
     [{"series": _sel("monitor_fibre_diameter_ratio"), "values": "1.0x10 0.91x30"},
      {"series": _sel("monitor_fibre_diameter_lower_limit_ratio"), "values": "0.95x40"},
      {"series": _sel("monitor_fibre_diameter_upper_limit_ratio"), "values": "1.05x40"}],
     [("14m", "SemFibreDiameterOutOfControl", []),
      ("16m", "SemFibreDiameterOutOfControl", [("line", "line1"), ("value", "0.91")])]),
    ("the chart wanders within its limits (the reference's own spread): no process alert",
     [{"series": _sel("monitor_fibre_diameter_ratio"),
       "values": " ".join(["1.0 1.03 0.97 1.045 0.955 1.02 0.98 1.01"] * 8)},
      {"series": _sel("monitor_fibre_diameter_lower_limit_ratio"), "values": "0.95x64"},
      {"series": _sel("monitor_fibre_diameter_upper_limit_ratio"), "values": "1.05x64"}],
     [("20m", "SemFibreDiameterOutOfControl", []), ("40m", "SemFibreDiameterOutOfControl", []),
      ("60m", "SemFibreDiameterOutOfControl", [])]),
    ("the chart holds at 1.04 and then 0.96 for half an hour each, inside its limits: no process alert",
     [{"series": _sel("monitor_fibre_diameter_ratio"), "values": "1.04x30 0.96x30"},
      {"series": _sel("monitor_fibre_diameter_lower_limit_ratio"), "values": "0.95x60"},
      {"series": _sel("monitor_fibre_diameter_upper_limit_ratio"), "values": "1.05x60"}],
     [("29m", "SemFibreDiameterOutOfControl", []), ("59m", "SemFibreDiameterOutOfControl", [])]),
    ("one window just over the limit for 3 min, then back: no process alert",
     [{"series": _sel("monitor_fibre_diameter_ratio"), "values": "1.0x10 1.06x3 1.0x20"},
      {"series": _sel("monitor_fibre_diameter_lower_limit_ratio"), "values": "0.95x33"},
      {"series": _sel("monitor_fibre_diameter_upper_limit_ratio"), "values": "1.05x33"}],
     [("13m", "SemFibreDiameterOutOfControl", []), ("20m", "SemFibreDiameterOutOfControl", [])]),
    ("the chart NaN (fewer than fibres.min_images, or no fibre reference): no process alert",
     [{"series": _sel("monitor_fibre_diameter_ratio"), "values": " ".join(["NaN"] * 41)},
      {"series": _sel("monitor_fibre_diameter_lower_limit_ratio"), "values": " ".join(["NaN"] * 41)},
      {"series": _sel("monitor_fibre_diameter_upper_limit_ratio"), "values": " ".join(["NaN"] * 41)}],
     [("30m", "SemFibreDiameterOutOfControl", [])]),
    ("worker stalled for 2 min",
     [{"series": _sel("monitor_worker_healthy"), "values": "1 1 0 0 0 0"}],
     [("3m", "SemWorkerStalled", []), ("4m", "SemWorkerStalled", [("line", "line1")])]),
]


def _alert_spec(alert: str, labels) -> dict:
    if labels == [("full", None)]:
        return expected(alert, **L)
    if labels and labels[0][0] == "target":
        return expected(alert, named=labels[0][1] or "", **TARGET)
    return expected(alert, **dict(labels))  # ("web", URL), ("value", V): rendered into annotations, not labels


def build_unit_tests(only: str | None = None) -> dict:
    """The promtool unit-test file for CASES (``only``: just the cases that evaluate that alert)."""
    tests = []
    for name, series, evals, *interval in CASES:
        if only and all(a != only for _, a, _ in evals):
            continue
        tests.append({
            "name": name, "interval": interval[0] if interval else "1m", "input_series": series,
            "alert_rule_test": [{"eval_time": t, "alertname": a, "exp_alerts": [_alert_spec(a, lab)] if lab else []}
                                for t, a, lab in evals]})
    return {"rule_files": [str(RULES)], "evaluation_interval": "15s", "tests": tests}


def test_rules_pass_promtool_check():
    r = subprocess.run([_needs("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("name", ["prometheus.yml", "prometheus-lines.yml"])
def test_scrape_configs_pass_promtool_check(name, tmp_path):
    cfg = yaml.safe_load((OPS / "prometheus" / name).read_text())
    # the monitor labels its own series with `line`; a target label would rename it to exported_line
    assert not any("line" in t.get("labels", {}) for j in cfg["scrape_configs"] for t in j["static_configs"])
    cfg["rule_files"] = [str(RULES)]  # the installed path, pointed at the repository's file
    (tmp_path / name).write_text(yaml.safe_dump(cfg))
    r = subprocess.run([_needs("promtool"), "check", "config", str(tmp_path / name)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_every_alert_is_unit_tested_firing_and_silent():
    firing = {a for _, _, ev, *_ in CASES for _, a, lab in ev if lab}
    silent = {a for _, _, ev, *_ in CASES for _, a, lab in ev if not lab}
    assert firing == set(rules()) and silent == set(rules())


def test_alert_unit_tests_pass_promtool(tmp_path):
    f = tmp_path / "sem-monitor.rules.test.yml"
    f.write_text(yaml.safe_dump(build_unit_tests(), sort_keys=False))
    r = subprocess.run([_needs("promtool"), "test", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_unit_tests_catch_a_broken_rule(tmp_path):
    broken = RULES.read_text().replace("for: 10m\n        labels:\n          severity: critical",
                                       "for: 1m\n        labels:\n          severity: critical", 1)
    assert broken != RULES.read_text()
    (tmp_path / "rules.yml").write_text(broken)
    spec = build_unit_tests(only="SemDefectCoverageSustained")
    spec["rule_files"] = [str(tmp_path / "rules.yml")]
    f = tmp_path / "t.yml"
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = subprocess.run([_needs("promtool"), "test", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode != 0 and "SemDefectCoverageSustained" in r.stdout + r.stderr


# one breakage of each threshold, window and duration of the changeover and drift alerts: a case must notice it
BROKEN = [
    ("SemImageMismatch", 'monitor_mismatches_total{reason=~"size|bit_depth|pixel_size"}[5m]',
     'monitor_mismatches_total{reason=~"size|bit_depth|pixel_size"}[1m]'),
    ("SemImageMismatch", 'monitor_mismatches_total{reason=~"size|bit_depth|pixel_size"}[5m]',
     'monitor_mismatches_total{reason=~"size|bit_depth|pixel_size"}[15m]'),
    ("SemImageMismatch", 'sum by (line, reason) (increase(monitor_mismatches_total{reason=~"size',
     'sum by (line) (increase(monitor_mismatches_total{reason=~"size'),
    ("SemAcquisitionProblem", 'sum by (line, reason) (increase(monitor_mismatches_total{reason=~"exposure',
     'sum by (line) (increase(monitor_mismatches_total{reason=~"exposure'),
    ("SemImageMismatch", '{reason=~"size|bit_depth|pixel_size"}[5m])) > 0',
     '{reason=~"size|bit_depth|pixel_size"}[5m])) >= 0'),
    ("SemImageMismatch", 'monitor_mismatches_total{reason=~"size|bit_depth|pixel_size"}[5m]',
     "monitor_mismatches_total[5m]"),
    ("SemImageMismatch", '{reason=~"size|bit_depth|pixel_size"}[5m]', '{reason!="coverage"}[5m]'),
    ("SemAcquisitionProblem", '{reason=~"exposure|focus|noise"}[5m]', '{reason=~"exposure|noise"}[5m]'),
    ("SemAcquisitionProblem", '{reason=~"exposure|focus|noise"}[5m]', '{reason=~"exposure|focus|noise"}[1m]'),
    ("SemImageMostlyAbnormal", '{reason="coverage"}[1m]', '{reason="coverage"}[5m]'),
    ("SemImageMostlyAbnormal", '{reason="coverage"}[1m]', '{reason="size"}[1m]'),
    ("SemScoreDrift", "(monitor_drift_ratio) > 1.5", "(monitor_drift_ratio) > 1.4"),
    ("SemScoreDrift", "(monitor_drift_ratio) > 1.5", "(monitor_drift_ratio) > 1.7"),
    ("SemScoreDrift", "max by (line) (monitor_drift_ratio) > 1.5 and",  # NaN <= 1.5 is false too: NaN fires
     "max by (line) (monitor_drift_ratio) unless max by (line) (monitor_drift_ratio) <= 1.5 and"),
    ("SemScoreDrift", "(monitor_drift_images) >= 20", "(monitor_drift_images) > 20"),
    ("SemScoreDrift", "(monitor_drift_images) >= 20", "(monitor_drift_images) >= 10"),
    ("SemScoreDrift", "> 1.5 and max by (line) (monitor_drift_images) >= 20\n        for: 30m",
     "> 1.5 and max by (line) (monitor_drift_images) >= 20\n        for: 20m"),
    ("SemScoreDrift", "/?verdict=ok{{ end }}{{ end }}'\n          dashboard: \"/d/sem-line-monitor/sem-line-monitor?"
     "var-line={{ $labels.line }}&viewPanel=14", "/?verdict=defect{{ end }}{{ end }}'\n          dashboard: \"/d/sem-"
     "line-monitor/sem-line-monitor?var-line={{ $labels.line }}&viewPanel=14"),
    ("SemFibreDiameterOutOfControl", "(monitor_fibre_diameter_upper_limit_ratio)\n          or",
     "(monitor_fibre_diameter_upper_limit_ratio) * 1.1\n          or"),
    ("SemFibreDiameterOutOfControl", "(monitor_fibre_diameter_ratio) < max by (line)",
     "(monitor_fibre_diameter_ratio) > max by (line)"),
    ("SemFibreDiameterOutOfControl", "(monitor_fibre_diameter_lower_limit_ratio)\n        for: 5m",
     "(monitor_fibre_diameter_lower_limit_ratio)\n        for: 2m"),
    ("SemFibreDiameterOutOfControl", "(monitor_fibre_diameter_lower_limit_ratio)\n        for: 5m",
     "(monitor_fibre_diameter_lower_limit_ratio)\n        for: 10m"),
    ("SemFibreDiameterOutOfControl", "ratio) > max by (line) (monitor_fibre_diameter_upper_limit_ratio)",
     "ratio) > max by (line) (monitor_fibre_diameter_upper_limit_ratio) - 0.03"),
]


@pytest.mark.parametrize("alert,good,bad", BROKEN, ids=[f"{a}:{b}" for a, _, b in BROKEN])
def test_unit_tests_catch_a_broken_changeover_or_drift_rule(alert, good, bad, tmp_path):
    text = RULES.read_text()
    assert text.count(good) == 1, good
    (tmp_path / "rules.yml").write_text(text.replace(good, bad))
    spec = build_unit_tests(only=alert)
    spec["rule_files"] = [str(tmp_path / "rules.yml")]
    f = tmp_path / "t.yml"
    f.write_text(yaml.safe_dump(spec, sort_keys=False))
    r = subprocess.run([_needs("promtool"), "test", "rules", str(f)], capture_output=True, text=True)
    assert r.returncode != 0 and alert in r.stdout + r.stderr, r.stdout + r.stderr


def test_every_alert_has_a_runbook_and_a_dashboard_link():
    dash = {p["id"] for p in json.loads(DASHBOARD_JSON.read_text())["panels"]}
    for name, r in rules().items():
        a = r["annotations"]
        assert a["summary"] and a["description"] and len(a["runbook"]) > 40, name
        assert r["labels"]["severity"] in ("critical", "warning", "info") and r["labels"]["team"], name
        panel = int(a["dashboard"].split("viewPanel=")[1])
        assert panel in dash, (name, panel)

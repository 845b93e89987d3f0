"""The backtest's report: what the new model would have said of the archive against what the line said (the
ledger's verdicts) or what the baseline model says, written as ``report.json`` and a self-contained
``report.html`` (the overlays of the images whose verdict changes beside it, under ``overlays/``)."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

import numpy as np

from monitor.commands.backtest.scoring import FAILED
from monitor.kinds import LabelKind, Verdict

NO_LABELS = "<tr><td colspan=\"4\">no labelled images</td></tr>"
BEFORE_NEW = "before \\ new"
ORDER = (Verdict.OK, Verdict.DEFECT, Verdict.MISMATCH, Verdict.NO_THRESHOLD, FAILED)
COVERAGE_BINS = (0, 1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 1.0)  # fractions of the image


def before_of(row: dict, baseline: bool) -> tuple[str | None, float | None]:
    """What was said of the image before: the baseline model's verdict and coverage, or the ledger's (for the
    same content only: a file rewritten since was another image)."""
    if baseline:
        return row["baseline_verdict"], row["baseline_coverage"]
    if row["old_verdict"] is None or (row["old_sha256"] and row["sha256"] and row["old_sha256"] != row["sha256"]):
        return None, None
    return row["old_verdict"], row["old_coverage"]


def summarize(rows: list[dict], baseline: bool, meta: dict) -> dict:
    """The report's figures: the verdict table (before x new), the changed images, the coverage distributions,
    the labelled images' agreement, the failures, the time per image."""
    table: Counter = Counter()
    changed, cov_new, cov_old, labelled = [], [], [], Counter()
    for r in rows:
        before, old_cov = before_of(r, baseline)
        table[(before or "unknown", r["verdict"])] += 1
        if r["coverage"] is not None:
            cov_new.append(r["coverage"])
        if old_cov is not None:
            cov_old.append(old_cov)
        if before is not None and before != r["verdict"]:
            changed.append({"path": r["path"], "before": before, "after": r["verdict"],
                            "coverage_before": old_cov, "coverage_after": r["coverage"], "reason": r["reason"],
                            "overlay": r.get("overlay_file")})
        if r["label"] in (LabelKind.CONFIRMED, LabelKind.FALSE_ALARM):
            truth = r["label"] == LabelKind.CONFIRMED  # a defect the operators confirmed (alarmed or missed)
            labelled[(r["label"], "before", (before == Verdict.DEFECT) == truth)] += 1
            labelled[(r["label"], "new", (r["verdict"] == Verdict.DEFECT) == truth)] += 1
    secs = [r["seconds"] for r in rows if r["seconds"] is not None and r["verdict"] != FAILED]
    befores = [b for b in (*ORDER, "unknown") if any(k[0] == b for k in table)]
    afters = [a for a in ORDER if any(k[1] == a for k in table)]
    agreement = {}
    for label in (LabelKind.CONFIRMED, LabelKind.FALSE_ALARM):
        n = labelled[(label, "new", True)] + labelled[(label, "new", False)]
        if n:
            agreement[str(label)] = {"images": n, "before_right": labelled[(label, "before", True)],
                                     "new_right": labelled[(label, "new", True)]}
    return {**meta, "images": len(rows),
            "verdicts": {"before": befores, "after": afters,
                         "counts": [[table[(b, a)] for a in afters] for b in befores]},
            "changed": sorted(changed, key=lambda c: (c["before"], c["after"], c["path"])),
            "coverage": {"bins": list(COVERAGE_BINS), "new": _hist(cov_new), "before": _hist(cov_old)},
            "labelled": agreement,
            "failures": dict(Counter(r["reason"].split(":")[0] for r in rows if r["verdict"] == FAILED)),
            "seconds_per_image": {"p50": _q(secs, 50), "p95": _q(secs, 95)}}


def _hist(values: list[float]) -> list[int]:
    return np.histogram(np.clip(values, 0, 1), bins=COVERAGE_BINS)[0].tolist()


def _q(values, q) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


def text(s: dict) -> str:
    """The summary as the command prints it."""
    w = max(len(b) for b in s["verdicts"]["before"]) if s["verdicts"]["before"] else 7
    lines = [f"{s['images']} images; new model {s['new_model']} against {s['against']}",
             f"{BEFORE_NEW:<{max(w, 12)}} " + " ".join(f"{a:>12}" for a in s["verdicts"]["after"])]
    for b, counts in zip(s["verdicts"]["before"], s["verdicts"]["counts"]):
        lines.append(f"{b:<{max(w, 12)}} " + " ".join(f"{c:>12}" for c in counts))
    lines.append(f"verdicts changed: {len(s['changed'])}")
    for label, a in s["labelled"].items():
        lines.append(f"labelled {label}: {a['images']} images; right before {a['before_right']}, "
                     f"right now {a['new_right']}")
    if s["failures"]:
        lines.append("not judged: " + ", ".join(f"{k} {v}" for k, v in sorted(s["failures"].items())))
    p = s["seconds_per_image"]
    if p["p50"] is not None:
        lines.append(f"seconds per image (reading and scoring): p50 {p['p50']}, p95 {p['p95']}")
    return "\n".join(lines)


def _bars(s: dict) -> str:
    """The two coverage distributions as one SVG bar chart (share of the images in each bin)."""
    new, old = s["coverage"]["new"], s["coverage"]["before"]
    tn, to = max(sum(new), 1), max(sum(old), 1)
    top = max([v / tn for v in new] + [v / to for v in old] + [1e-9])  # the tallest bar fills the chart
    w, h, bw = 640, 200, 64
    out = [f'<svg viewBox="0 0 {w} {h + 40}" width="{w}" height="{h + 40}" role="img" '
           'aria-label="Coverage distributions of the new model and before">']
    for i, (a, b) in enumerate(zip(new, old)):
        x = i * bw
        for j, (v, tot, cls) in enumerate(((b, to, "before"), (a, tn, "new"))):
            bh = round((h - 14) * v / tot / top)  # room for the count above the tallest
            out.append(f'<rect class="{cls}" x="{x + 6 + j * 26}" y="{h - bh}" width="24" height="{bh}">'
                       f'<title>{cls}: {v} images</title></rect><text x="{x + 18 + j * 26}" y="{h - bh - 3}" '
                       f'text-anchor="middle">{v}</text>')
        lo = COVERAGE_BINS[i] * 100
        out.append(f'<text x="{x + 32}" y="{h + 16}" text-anchor="middle">{lo:g}%</text>')
    out.append(f'<text x="{w - 4}" y="{h + 34}" text-anchor="end">defect coverage (bins from)</text></svg>')
    return "".join(out)


def page(s: dict) -> str:
    e = html.escape
    v = s["verdicts"]
    head = "".join(f"<th>{e(a)}</th>" for a in v["after"])
    body = "".join(f"<tr><th>{e(b)}</th>" + "".join(f"<td>{c}</td>" for c in counts) + "</tr>"
                   for b, counts in zip(v["before"], v["counts"]))
    changed = "".join(
        f"<tr><td>{e(c['path'])}</td><td>{e(c['before'])}</td><td>{e(c['after'])}</td>"
        f"<td>{_pct(c['coverage_before'])}</td><td>{_pct(c['coverage_after'])}</td>"
        f"<td>{e(c['reason'] or '')}</td><td>" + (f'<a href="{e(c["overlay"])}"><img src="{e(c["overlay"])}" '
                                                   'width="320" loading="lazy"></a>' if c["overlay"] else "")
        + "</td></tr>" for c in s["changed"])
    agree = "".join(f"<tr><th>{e(k)}</th><td>{a['images']}</td><td>{a['before_right']}</td><td>{a['new_right']}"
                    "</td></tr>" for k, a in s["labelled"].items()) or NO_LABELS
    fails = ", ".join(f"{e(k)}: {n}" for k, n in sorted(s["failures"].items())) or "none"
    p = s["seconds_per_image"]
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Backtest of {e(s['new_model'])}</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em;max-width:1200px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}
td:first-child{{text-align:left;max-width:22em;word-break:break-all}}
rect.new{{fill:#c0392b}}rect.before{{fill:#7f8c8d}}text{{font-size:11px}}.key span{{padding:0 6px;color:#fff}}</style>
</head><body><h1>Backtest of model {e(s['new_model'])}</h1>
<p>{s['images']} images of {e(', '.join(s['archive']))}, against {e(s['against'])}; scored {e(s['finished_at'])}
{e(s['engine'])}. Reading and scoring per image: p50 {p['p50']} s, p95 {p['p95']} s.</p>
<h2>Verdicts: before (rows) and the new model (columns)</h2><table><tr><th>before \\ new</th>{head}</tr>{body}</table>
<h2>Verdicts that change ({len(s['changed'])})</h2><table><tr><th>image</th><th>before</th><th>new</th>
<th>coverage before</th><th>coverage new</th><th>reason</th><th>overlay (new model)</th></tr>{changed}</table>
<h2>Defect coverage</h2><p class="key"><span style="background:#7f8c8d">before</span>
<span style="background:#c0392b">new model</span> share of the scored images in each bin</p>{_bars(s)}
<h2>Labelled images</h2><table><tr><th>operators' label</th><th>images</th><th>right before</th>
<th>right with the new model</th></tr>{agree}</table>
<h2>Not judged</h2><p>{fails}</p></body></html>
"""


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.3f}%"


def write(out: Path, s: dict) -> None:
    from monitor.files import atomic_write

    atomic_write(out / "report.json", json.dumps(s, indent=1).encode())
    atomic_write(out / "report.html", page(s).encode())

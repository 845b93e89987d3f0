"""The verdict from a defect report: coverage, per-defect evidence (area and peak over the threshold), mismatch."""

import numpy as np
import pytest

from monitor.model.defects import Defect, DefectReport, decide

TH = 20.0


def _report(coverage, *defects):
    return DefectReport(np.zeros((2, 2), bool), coverage,
                        tuple(Defect(a, (0, 0, 1, 1), (0.0, 0.0), p) for a, p in defects))


@pytest.mark.parametrize("name,report,verdict", [
    ("coverage over the line", _report(0.002, (800, 20.5)), "defect"),
    ("compact defect peaking 7% over the threshold", _report(0.0003, (150, 21.4)), "defect"),
    ("compact defect peaking only 3% over: a clean image's speck", _report(0.0003, (150, 20.6)), "ok"),
    ("high peak but 90 px: a speck", _report(0.0001, (90, 25.0)), "ok"),
    ("the second defect carries the evidence", _report(0.0004, (300, 20.2), (120, 22.0)), "defect"),
    ("nothing found", _report(0.0), "ok"),
    ("most of the image abnormal", _report(0.6, (400000, 30.0)), "mismatch"),
])
def test_decide(name, report, verdict):
    assert decide(report, 0.001, 100, 0.5, TH * 1.06) == verdict, name


def test_without_a_peak_bound_the_area_alone_decides_as_before():
    assert decide(_report(0.0003, (150, 20.6)), 0.001, 100, 0.5) == "defect"
    assert decide(_report(0.0003, (150, 20.6)), 0.001, 0, 0.5) == "ok"  # max_defect_area 0: off
    assert decide(None) == "no-threshold"


def test_the_model_passes_its_threshold_and_the_margin(fitted_model, defect_sample):
    image, _ = defect_sample
    ins = fitted_model.inspect(image, 0.5, 10, 0.0, 0.0)  # coverage line out of reach: the area rule decides
    assert ins.verdict == "defect" and max(d.peak for d in ins.report.defects) >= ins.threshold
    assert fitted_model.inspect(image, 0.5, 10, 0.0, 100.0).verdict == "ok"  # no peak is 100x the threshold

"""The alarm: the decision for one image, the alarm state over the stream, and the operator's files.

Files (overlay PNG and result JSON) go to the output folder, written atomically (temporary name, then rename);
never into the export folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monitor.config import AlarmSection
from monitor.document import ResultDocument
from monitor.files import atomic_write, shown
from monitor.kinds import Verdict
from monitor.model.model import Inspection
from monitor.model.overlay import Caption, render_overlay, render_unscored, write_png


@dataclass
class AlarmState:
    """Raised by a defective image; cleared by ``clear_after`` consecutive clean images."""

    cfg: AlarmSection
    active: bool = False
    clean_run: int = 0

    def update(self, defect: bool) -> bool:
        if defect:
            self.active, self.clean_run = True, 0
        elif self.active:
            self.clean_run += 1
            if self.clean_run >= self.cfg.clear_after:
                self.active, self.clean_run = False, 0
        return self.active


def caption_for(result: ResultDocument) -> Caption:
    """The overlay banner of a result (the document the worker records and writes as JSON)."""
    return Caption(verdict=result.verdict, file_name=shown(Path(result.image or "").name), when=result.scored_at or "",
                   line=result.line or "", coverage=result.coverage, coverage_threshold=result.coverage_threshold,
                   n_defects=result.n_defects, largest_area=result.defects[0].get("area") if result.defects else None,
                   pixel_size_um=result.pixel_size_um, model_id=result.model_id,
                   note=result.mismatch or "" if result.verdict == Verdict.MISMATCH else "")


def picture(image, ins: Inspection | None, result: ResultDocument):
    """The operator's picture of a result: the image with its heat map, defect outlines and banner; ``ins`` None: an
    image that was not scored (a mismatch of acquisition quality), shown with its banner and no heat map. The one
    rule the worker's overlays and `monitor score --overlay` draw by."""
    if ins is None:
        return render_unscored(image, caption_for(result))
    return render_overlay(image, ins.result.anomaly_map, ins.report, caption_for(result), ins.threshold)


def write_outputs(out_dir: Path, stem: str, image, ins: Inspection | None, result: ResultDocument) -> Path:
    """Overlay PNG (``picture``) + result JSON named ``stem``; returns the overlay path."""
    overlay, js = out_dir / f"{stem}.png", out_dir / f"{stem}.json"
    try:
        write_png(overlay, picture(image, ins, result))
        atomic_write(js, (result.with_head(overlay=str(overlay)).to_json(indent=2) + "\n").encode())
    except BaseException:  # no half pair left behind: retention only knows the files of a recorded overlay
        for f in (overlay, js):
            f.unlink(missing_ok=True)
        raise
    return overlay

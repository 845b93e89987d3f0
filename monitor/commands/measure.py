"""`monitor measure`: the fibres of SEM images (diameter distribution, orientation, porosity, beads), no model needed.

One JSON object per image (``--json``), or one line each for people; ``--overlay DIR`` draws each image's fibre
overlay. An image that cannot be read or measured gives ``"fibres": null`` and a ``"reason"``, and the command goes
on with the next one (exit 1 at the end).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from monitor.config import Config
from monitor.files import shown
from monitor.model.fibre_overlay import render_fibres, render_unmeasured
from monitor.model.fibres import FibreError, measure
from monitor.model.images import ImageError, list_images, read_image
from monitor.model.overlay import write_png


def measure_images(cfg: Config, images: list[str], as_json: bool, overlay: str | None,
                   pixel_size_um: float | None) -> int:
    """Measure every image of ``images`` (files or folders); returns the exit code (1 if any was not measured)."""
    failed = 0
    out_dir = Path(overlay) if overlay else None
    for path in list_images(images):
        info: dict = {}
        doc: dict = {"image": str(path)}
        image = None
        try:
            image = read_image(path, cfg.image, info=info)
            um = pixel_size_um or cfg.image.pixel_size_um or info.get("pixel_size_um")
            m = measure(image, um, cfg.fibres.measure)
            doc["fibres"] = m.figures.to_dict()
        except (ImageError, FibreError) as exc:
            m = None
            doc.update(fibres=None, reason=exc.reason if isinstance(exc, ImageError) else str(exc))
            failed += 1
        if out_dir is not None and image is not None:
            out_dir.mkdir(parents=True, exist_ok=True)
            title = shown(path.name)
            pic = render_fibres(image, m, title) if m else render_unmeasured(image, title, doc["reason"])
            doc["overlay"] = str(out_dir / f"{path.stem}.fibres.png")
            write_png(doc["overlay"], pic)
        if as_json:
            print(json.dumps(doc))
        else:
            print(_line(doc))
        if m is None:
            print(f"monitor: measure {shown(str(path))}: {doc['reason']}", file=sys.stderr)
    return 1 if failed else 0


def _line(doc: dict) -> str:
    name = shown(Path(doc["image"]).name)
    f = doc["fibres"]
    if f is None:
        return f"{name}: not measured ({doc['reason']})"
    d, um = f["diameter_px"], f["diameter_um"]
    size = f"{d['mean']:.2f} px" + (f" ({um['mean']:.3g} um)" if um else "")
    return (f"{name}: diameter mean {size}, median {d['median']:.2f}, sd {d['std']:.2f}, p10-p90 {d['p10']:.2f}-"
            f"{d['p90']:.2f} px (n {d['n']}); orientation {f['orientation_deg']:.1f} deg, coherency "
            f"{f['coherency']:.3f}; porosity {f['porosity']:.3f}; beads {f['beads']['count']}"
            + (f" ({f['beads']['per_mm2']:.0f}/mm2)" if f["beads"]["per_mm2"] is not None else ""))

"""Screenshots of the results page for the docs: a real `monitor run` on a synthetic line, a real headless Chromium.

    .venv/bin/python bench/screenshots.py [--out docs] [--width 1280] [--height 900]

Fits a small model on synthetic clean mats (as the demo does), starts the daemon, writes a few synthetic images
into its export folder (TIFF, as SEM software exports them; three with defects drawn, one broken file, one that is
not a mat), labels one alarm a false alarm, waits for the results and saves the list (`results-list.png`), the page
of the most defective image (`result-page.png`), the label section of the labelled one (`result-label.png`) and the
fibre section of a clean one (`result-fibres.png`) at a tablet-like viewport. Needs `make tools` (chromium,
chromium-driver). Everything is synthetic.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from monitor.ledger import Ledger  # noqa: E402
from monitor.model.defects import DefectConfig  # noqa: E402
from monitor.model.model import Model  # noqa: E402
from monitor.model.scorers import PatchDictionaryConfig  # noqa: E402
from monitor.model.synth import defective_image, fiber_mat, to_uint8  # noqa: E402
from monitor.model.threshold import ThresholdConfig  # noqa: E402
from monitor.passwords import MIN_ITERATIONS, hash_password  # noqa: E402
from tests import browser  # noqa: E402  (the test suite's Chromium set-up, one definition of its flags)
from tests.daemon import Daemon, write_renamed  # noqa: E402

SHAPE = (384, 512)


def tif(img) -> bytes:
    ok, buf = cv2.imencode(".tif", to_uint8(img))
    assert ok
    return buf.tobytes()


def shot(driver, path: Path, full: bool) -> None:
    if not full:
        driver.save_screenshot(str(path))
        return
    import base64

    png = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True})
    path.write_bytes(base64.b64decode(png["data"]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "docs"))
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--full", action="store_true", help="whole pages, not only the viewport")
    args = ap.parse_args()
    why = browser.missing()
    if why:
        print(f"screenshots: {why}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="screenshots-"))
    model_dir = work / "model"
    print(f"screenshots: fitting a small model on synthetic mats in {work} ...")
    Model.fit("patch_dictionary", PatchDictionaryConfig(k=512, aggregate=3),
              [fiber_mat(SHAPE, seed=i) for i in range(8)], [fiber_mat(SHAPE, seed=100 + i) for i in range(2)],
              ThresholdConfig(), DefectConfig(), device="cpu").save(model_dir)
    d = Daemon(work / "line", model_dir, service={"line": "line3"},
               web={"write_password_hash": str(hash_password("screenshots", MIN_ITERATIONS))})
    d.start()
    try:
        images = [("SEM_0412.tif", tif(fiber_mat(SHAPE, seed=500))),
                  ("SEM_0413.tif", tif(fiber_mat(SHAPE, seed=501))),
                  ("SEM_0414.tif", tif(defective_image(SHAPE, ("bead", "clot", "dust"), seed=9, size=1.5)[0])),
                  ("SEM_0415.tif", tif(fiber_mat(SHAPE, seed=502))),
                  ("SEM_0416.tif", b"II*\x00" + b"\x00" * 64),  # an export cut short
                  ("SEM_0417.tif", tif(fiber_mat(SHAPE, seed=503))),
                  ("SEM_0418.tif", tif(defective_image(SHAPE, ("film", "bead", "clot"), seed=11, size=1.5)[0])),
                  ("2026-11-24_line3_sample-B7_magnification-5000x_detector-SE_long-export-name_0419.tif",
                   tif(fiber_mat(SHAPE, seed=504))),
                  ("SEM_0420.tif", tif(np.random.default_rng(1).random(SHAPE).astype(np.float32)))]  # not a mat
        for name, data in images:
            write_renamed(d.export, name, data)
            time.sleep(0.3)
        rows = d.wait_finished(len(images), timeout=120)
        worst = max((r for r in rows if r["verdict"] == "defect"), key=lambda r: r["coverage"] or 0)
        other = next(r for r in rows if r["verdict"] == "defect" and r["id"] != worst["id"])
        clean = next(r for r in rows if r["verdict"] == "ok")
        ledger = Ledger(d.ledger_path)  # as `monitor label` does, from another process
        ledger.label(other["id"], "false_alarm", "Ana (shift B)", "charging artefact, mat is fine")
        ledger.close()
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        driver = browser.chromium(str(work / "profile"), args.width, args.height)
        try:
            for url, name in ((f"http://127.0.0.1:{d.web_port}/", "results-list.png"),
                              (f"http://127.0.0.1:{d.web_port}/result/{worst['id']}", "result-page.png"),
                              (f"http://127.0.0.1:{d.web_port}/result/{other['id']}#label", "result-label.png"),
                              (f"http://127.0.0.1:{d.web_port}/result/{clean['id']}#fibres", "result-fibres.png")):
                driver.get(url)  # returns once the page and its overlay image have loaded
                shot(driver, out / name, args.full)
        finally:
            driver.quit()
        for name in ("results-list.png", "result-page.png", "result-label.png", "result-fibres.png"):
            print(f"screenshots: wrote {out / name}")
    finally:
        d.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("SE_OFFLINE", "true")
    sys.exit(main())

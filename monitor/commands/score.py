"""`monitor score IMAGE... --model DIR`: each image judged as the daemon judges it (``monitor.judge``: read, the
acquisition check against the model, score, defects, fibres), one JSON line each, with the time of each step;
``--overlay DIR`` draws the operator's picture, ``--maps DIR`` saves the anomaly maps."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from monitor.config import Config
from monitor.model.images import ImageError, list_images


def score_images(cfg: Config, args, check_model: bool) -> int:
    """``args``: the command's (model, images, overlay, maps); ``check_model``: the model must match the
    configuration's backbone and mode (a configuration was given, as a file or with --set). Exit code: 1 when an
    image could not be read, else 0."""
    from monitor import judge
    from monitor.daemon.alarm import picture
    from monitor.model.model import Model, expectations
    from monitor.model.overlay import write_png
    from monitor.model.quality import QUALITY_REASONS
    from monitor.times import local_time

    model = Model.load(args.model, cfg.model.device, expectations(cfg.model.method_config) if check_model else None,
                       runtime=cfg.model.runtime, precision=cfg.model.precision)
    failed = 0
    line = cfg.service.line if args.config else ""  # a line named in a configuration file
    for path in list_images(args.images):
        t0 = time.perf_counter()
        try:  # judged as the daemon judges it (monitor/judge.py), with the time of each step
            img, info = judge.read(cfg, model, path)
        except ImageError as exc:
            print(json.dumps({"image": str(path), "error": exc.reason}))
            failed += 1
            continue
        unfit = judge.check(cfg, model, img, info, t0)
        if unfit is not None:  # not scored against a model it does not fit
            doc = unfit.document.with_head(image=str(path), model_id=model.model_id)
            if args.overlay and unfit.mismatch_reason in QUALITY_REASONS:  # an acquisition problem: image, reason
                write_png(Path(args.overlay) / f"{path.stem}.png",
                          picture(img, None, doc.with_head(scored_at=local_time(), line=line)))
            print(doc.to_json())
            continue
        t1 = time.perf_counter()
        ins = judge.inspect(cfg, model, [img])[0]
        t2 = time.perf_counter()
        j = judge.conclude(cfg, path, img, info, ins, t2 - t0)
        t3 = time.perf_counter()  # after the fibre measurement (judge.conclude)
        doc = j.document.with_head(image=str(path), model_id=model.model_id)
        out = {**doc.to_dict(), "timings": {"load": round(t1 - t0, 4), "score": round(t2 - t1, 4),
                                            "total": round(t3 - t0, 4),
                                            **{k: round(v, 4) for k, v in ins.result.timings.items()}}}
        if args.maps:
            Path(args.maps).mkdir(parents=True, exist_ok=True)
            np.save(Path(args.maps) / f"{path.stem}.npy", ins.result.anomaly_map.astype(np.float32))
        if args.overlay:
            write_png(Path(args.overlay) / f"{path.stem}.png",
                      picture(img, ins, doc.with_head(scored_at=local_time(), line=line)))
        print(json.dumps(out))
    return 1 if failed else 0

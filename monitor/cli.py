"""Subcommands: fit, score, measure, evaluate, run, demo, history, label, refit, check-config, install-model, rollback,
hash-password."""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import os
import sys
import warnings
from pathlib import Path

from monitor import __version__
from monitor.commands.fit import fit_model
from monitor.config import Config, ConfigError, in_export, load_config
from monitor.errors import MonitorError
from monitor.extras import installed, need_torch
from monitor.files import shown
from monitor.model.images import list_images
from monitor.model.methods import METHOD_NAMES
from monitor.passwords import ITERATIONS

log = logging.getLogger(__name__)


def _load_cfg(args) -> Config:
    return load_config(args.config, args.set or [])


def cmd_fit(args) -> int:
    need_torch("monitor fit")
    cfg = _load_cfg(args)
    if args.method:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, method=args.method))
    normal = list_images(args.normal)
    val = list_images(args.val) if args.val else []
    overlap = {p.resolve() for p in normal} & {p.resolve() for p in val}
    if overlap:
        raise ConfigError(f"validation images must not be training images: {sorted(map(str, overlap))[0]}")
    if not normal:
        raise ConfigError("no normal images found in " + " ".join(args.normal))
    if in_export(args.out, cfg.watch.dir):
        raise ConfigError(f"--out {args.out} lies inside the export folder watch.dir ({cfg.watch.dir}); the monitor "
                          "never writes there")
    model, model_id, secs = fit_model(cfg, normal, val, Path(args.out), args.quiet)
    th = model.threshold
    print(json.dumps({"model_id": model_id, "out": str(args.out), "fit_seconds": round(secs, 2),
                      "n_normal": len(normal), "n_val": len(val), "inference_graph": model.meta.graph is not None,
                      "threshold": None if th is None else th.to_dict()}, indent=2))
    if model.meta.graph is None:
        print("monitor: warning: the model has no inference graph (see the log above): scoring it needs torch, "
              "the [fit] extra, not the line PC's install", file=sys.stderr)
    return 0


def cmd_score(args) -> int:
    from monitor.commands.score import score_images

    return score_images(_load_cfg(args), args, check_model=bool(args.config or args.set))


def cmd_backtest(args) -> int:
    from monitor.commands.backtest import backtest

    if not args.archive and not args.from_ledger:
        raise ConfigError("name archive folders or --from-ledger LEDGER")
    if args.baseline and args.against:
        raise ConfigError("--baseline and --against compare with two different things; give one")
    if min(args.batch, args.flush_rows, args.cpus_per_actor, args.actors or 1) < 1:
        raise ConfigError("--batch, --flush-rows, --actors and --cpus-per-actor must be >= 1")
    cfg = _load_cfg(args)
    if in_export(args.out, cfg.watch.dir):
        raise ConfigError(f"--out {args.out} lies inside the export folder watch.dir ({cfg.watch.dir}); the monitor "
                          "never writes there")
    return backtest(cfg, args)


def cmd_measure(args) -> int:
    from monitor.commands.measure import measure_images

    if args.pixel_size_um is not None and not args.pixel_size_um > 0:
        raise ConfigError(f"--pixel-size-um must be > 0, got {args.pixel_size_um}")
    cfg = _load_cfg(args)
    if args.overlay and in_export(args.overlay, cfg.watch.dir):
        raise ConfigError(f"--overlay {args.overlay} lies inside the export folder watch.dir ({cfg.watch.dir}); the "
                          "monitor never writes there")
    return measure_images(cfg, args.images, args.json, args.overlay, args.pixel_size_um)


def cmd_evaluate(args) -> int:
    need_torch("monitor evaluate")
    from monitor.commands.evaluate import run_evaluation

    return run_evaluation(args)


def cmd_demo(args) -> int:
    need_torch("monitor demo (it fits a model)")
    from monitor.commands.demo import run_demo

    return run_demo(Path(args.workdir), args.images, args.seed, args.interval)


def cmd_run(args) -> int:
    from monitor.daemon.service import Service

    cfg = _load_cfg(args)
    return Service(cfg, args.config).run()


def _ledger_path(args) -> Path:
    return Path(args.ledger or _load_cfg(args).output.ledger)


def cmd_history(args) -> int:
    from monitor.commands.history import print_history

    return print_history(_ledger_path(args), args)


def cmd_label(args) -> int:
    from monitor.commands.history import label_result

    return label_result(_ledger_path(args), args)


def cmd_check_config(args) -> int:
    from monitor.commands.checks import check

    cfg = _load_cfg(args)
    print(json.dumps(dataclasses.asdict(cfg), indent=2))
    problems = check(cfg, ports=not args.skip_ports, root=args.root)
    for p in problems:
        print(f"monitor: check-config: {p}", file=sys.stderr)
    if problems:
        return 2
    print("monitor: check-config: ready (paths, model, ports)", file=sys.stderr)
    return 0


def cmd_install_model(args) -> int:
    from monitor.commands.install import install_model

    return _lifecycle(install_model(Path(args.model_dir), _load_cfg(args)), "installed")


def cmd_rollback(args) -> int:
    from monitor.commands.install import rollback

    return _lifecycle(rollback(_load_cfg(args)), "rolled back to")


def _lifecycle(res: dict, what: str) -> int:
    print(json.dumps(res))
    pid = res["reloaded_pid"]
    print(f"monitor: {what} model {res['model_id']} at {res['path']} (previous: {res['previous']}); "
          + (f"the running monitor (pid {pid}) reloads it" if pid else "no monitor runs on this configuration: "
             "it loads the model at its next start"), file=sys.stderr)
    return 0


def cmd_refit(args) -> int:
    need_torch("monitor refit (it fits a candidate model)")
    from monitor.commands.refit import inside_export, refit, render, write_report

    cfg = _load_cfg(args)
    if args.report:
        inside_export(Path(args.report), cfg, "--report")
    report = refit(cfg, args.recent, Path(args.out) if args.out else None, args.apply, args.seed, args.quiet)
    path = Path(args.report) if args.report else Path(report["candidate_dir"]) / "refit.json"
    write_report(report, path)
    print(render(report))
    print(f"report: {path}")
    if not report["passed"]:
        print("monitor: refit: the candidate fails validation" + (" and was NOT installed" if args.apply else ""),
              file=sys.stderr)
        return 1
    if args.apply:
        return _lifecycle(report["applied"], "installed")
    print(f"monitor: refit: the candidate passes; install it with --apply (or `monitor install-model "
          f"{report['candidate_dir']} --config {args.config}`)", file=sys.stderr)
    return 0


def cmd_hash_password(args) -> int:
    """The web.password_hash line for a password read from the terminal (twice) or from stdin (its first line)."""
    from getpass import getpass

    from monitor.passwords import hash_password

    if sys.stdin.isatty():
        password = getpass("password for the results page: ")
        if getpass("again: ") != password:
            raise ConfigError("the two passwords differ")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise ConfigError("empty password")
    try:
        print(hash_password(password, args.iterations))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return 0


def version_line() -> str:
    """``monitor 0.4.0 (Python 3.11.7, torch 2.14.1, openvino 2026.4.1)``, without importing torch."""
    parts = [f"Python {sys.version.split()[0]}"]
    parts += [f"{dist} {installed(dist) or 'not installed'}" for dist in ("torch", "openvino")]
    return f"monitor {__version__} ({', '.join(parts)})"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="monitor", description="SEM nanofiber defect monitor")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=version_line())
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp):
        sp.add_argument("--config", help="YAML configuration (default: built-in defaults = config.yaml)")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a configuration key, e.g. model.patch_dictionary.mode=crop")

    sp = sub.add_parser("fit", help="fit a model on defect-free images")
    common(sp)
    sp.add_argument("--normal", nargs="+", required=True, help="defect-free images or folders (the dictionary)")
    sp.add_argument("--val", nargs="+", help="held-out defect-free images or folders (the threshold)")
    sp.add_argument("--out", required=True, help="model directory to write")
    sp.add_argument("--method", choices=sorted(METHOD_NAMES), help="scoring method (default: model.method)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_fit)

    sp = sub.add_parser("score", help="score images with a fitted model; one JSON line per image")
    common(sp)
    sp.add_argument("images", nargs="+")
    sp.add_argument("--model", required=True)
    sp.add_argument("--overlay", help="folder for overlay PNGs")
    sp.add_argument("--maps", help="folder for raw float32 anomaly maps (.npy, same size as the image)")
    sp.set_defaults(func=cmd_score)

    sp = sub.add_parser("measure", help="the fibres of images: diameter distribution, orientation, porosity, beads "
                                        "(no model needed)")
    common(sp)
    sp.add_argument("images", nargs="+", help="image files or folders")
    sp.add_argument("--json", action="store_true", help="one JSON object per image (default: one line each)")
    sp.add_argument("--overlay", help="folder for the fibre overlays (<name>.fibres.png)")
    sp.add_argument("--pixel-size-um", type=float, help="micrometres per pixel (default: image.pixel_size_um, else the "
                                                        "SEM's TIFF tags; without either, sizes in pixels only)")
    sp.set_defaults(func=cmd_measure)

    sp = sub.add_parser("backtest", help="what a new model would have said of an archive of images (or a ledger's): "
                                         "the verdicts against the line's or a baseline model's, a Parquet row per "
                                         "image, a report; on a Ray cluster")
    common(sp)
    sp.add_argument("archive", nargs="*", help="archive folders (read recursively, by watch.patterns) or images")
    sp.add_argument("--model", required=True, help="the new model's folder")
    sp.add_argument("--baseline", help="a model to score the same images with, in the same run, for comparison")
    sp.add_argument("--against", help="a ledger whose verdicts (and labels) the new model's are compared with")
    sp.add_argument("--from-ledger", help="score the images this ledger recorded (checked against its sha256); "
                                          "compared with its verdicts unless --baseline is given")
    sp.add_argument("--since", help="with --from-ledger: only images seen in the last N s/m/h/d/w, e.g. 30d")
    sp.add_argument("--out", required=True, help="folder for rows.parquet, report.html and the overlays; a rerun "
                                                 "into it scores only what is not done")
    sp.add_argument("--ray", default="local", help="local (default: a Ray cluster on this machine for the job), off "
                                                   "(in this process), or a cluster's address (auto, ray://head:10001)")
    sp.add_argument("--actors", type=int, help="scoring actors (default: one per --cpus-per-actor CPUs of the "
                                               "cluster, or one per GPU)")
    sp.add_argument("--cpus-per-actor", type=int, default=1, help="CPUs (threads) of each actor (default 1)")
    sp.add_argument("--batch", type=int, default=8, help="images per batch (default 8)")
    sp.add_argument("--flush-rows", type=int, default=256, help="rows per Parquet part (default 256; a part is also "
                                                                "written every 10 s): a killed run scores at most "
                                                                "these again")
    sp.add_argument("--no-overlays", action="store_true", help="no overlays of the images whose verdict changes")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_backtest)

    sp = sub.add_parser("evaluate", help="pixel ROC-AUC, PRO, per-defect coverage and time on a labelled data set")
    common(sp)
    sp.add_argument("--data", required=True)
    sp.add_argument("--layout", choices=("nanotwice", "mvtec"), default="nanotwice")
    sp.add_argument("--model", action="append", help="model directory (repeat to compare)")
    sp.add_argument("--fit", action="append", choices=sorted(METHOD_NAMES),
                    help="fit this method on the data set's normal split, then evaluate it (repeat to compare)")
    sp.add_argument("--out", default="evaluation", help="folder for evaluation.json/.md and ROC plots")
    sp.add_argument("--limit", type=int, help="only the first N test images")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("demo", help="the daemon on a synthetic line: fit, watch, score, alarm (no data needed)")
    sp.add_argument("--workdir", default="demo-run")
    sp.add_argument("--images", type=int, default=12, help="images the synthetic microscope writes, then stop")
    sp.add_argument("--interval", type=float, default=1.0, help="seconds between two images")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=cmd_demo)

    sp = sub.add_parser("run", help="the daemon: watch the export folder, score every new image, raise alarms")
    common(sp)
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser("history", help="print the ledger: what was seen, scored, failed")
    common(sp)
    sp.add_argument("--ledger", help="ledger file (default: output.ledger of the configuration)")
    sp.add_argument("--since", help="only images seen in the last N s/m/h/d/w, e.g. 1h")
    sp.add_argument("--alarms", action="store_true", help="only images that raised the alarm")
    sp.add_argument("--limit", type=int, help="only the last N rows")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_history)

    sp = sub.add_parser("label", help="say what a result was: a false alarm, or a confirmed defect (kept in the "
                                      "ledger with who and when; the result itself is not changed)")
    sp.add_argument("image", help="the result: its ledger id (monitor history), its path as recorded, or its file name")
    common(sp)
    sp.add_argument("--ledger", help="ledger file (default: output.ledger of the configuration)")
    kind = sp.add_mutually_exclusive_group(required=True)
    kind.add_argument("--false-alarm", action="store_true", help="the alarm was wrong: no defect on this image")
    kind.add_argument("--confirmed", action="store_true", help="a real defect (also one the monitor did not alarm on)")
    sp.add_argument("--note", help="a short note (at most 500 characters)")
    sp.add_argument("--by", help="who labels (default: the user running the command)")
    sp.set_defaults(func=cmd_label)

    sp = sub.add_parser("check-config", help="validate a configuration and this host (paths, model, ports); print "
                                             "it with defaults filled in")
    common(sp)
    sp.add_argument("--skip-ports", action="store_true", help="do not check that the ports are free (a monitor "
                                                              "with this configuration is running)")
    sp.add_argument("--root", help="a staged installation's root (make install-service DESTDIR=...): look the "
                                   "configuration's absolute paths up under it")
    sp.set_defaults(func=cmd_check_config)

    sp = sub.add_parser("install-model", help="validate a fitted model and install it as model.path, keeping the "
                                              "previous one; a running monitor reloads")
    sp.add_argument("model_dir")
    common(sp)
    sp.set_defaults(func=cmd_install_model)

    sp = sub.add_parser("rollback", help="go back to the model installed before (a running monitor reloads)")
    common(sp)
    sp.set_defaults(func=cmd_rollback)

    sp = sub.add_parser("refit", help="fit a candidate model from the line's history (its normal images, the false "
                                      "alarms, recent ok images), validate it on the labelled results, print the "
                                      "before/after table; --apply installs it")
    common(sp)
    sp.add_argument("--recent", type=int, default=20, help="recent ok images to sample from the ledger (default 20; "
                                                           "half join the dictionary, half the threshold)")
    sp.add_argument("--out", help="candidate model folder (default: <model.path>.candidate)")
    sp.add_argument("--report", help="JSON report (default: <candidate>/refit.json)")
    sp.add_argument("--apply", action="store_true", help="install the candidate when it passes (as install-model)")
    sp.add_argument("--seed", type=int, default=0, help="seed of the recent-image sample")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_refit)

    sp = sub.add_parser("hash-password", help="hash a password for web.password_hash (read from stdin or a prompt)")
    sp.add_argument("--iterations", type=int, default=ITERATIONS, help=f"PBKDF2 iterations (default {ITERATIONS})")
    sp.set_defaults(func=cmd_hash_password)
    return p


class OneLineFormatter(logging.Formatter):
    """A log message is one line, whatever a file name holds (``files.shown``); tracebacks keep their lines."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = shown(record.message)
        return super().formatMessage(record)


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A Python warning (a decoder's "Corrupt EXIF data", a library's deprecation) as one log line, not the two
    raw lines of ``warnings``."""
    logging.getLogger("py.warnings").warning("%s: %s (%s:%d)", category.__name__, str(message).splitlines()[0],
                                             Path(filename).name, lineno)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    warnings.showwarning = _warning_line
    try:
        return args.func(args)
    except MonitorError as exc:  # what the user can act on: one line, its exit code
        print(f"monitor: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except FileNotFoundError as exc:
        print(f"monitor: error: {exc}", file=sys.stderr)
        return 2


def entry() -> None:
    """The ``monitor`` command: ``main()``, then a quick exit. Every command closes what it writes (models, the
    ledger, overlays) before it returns; the interpreter's own teardown of torch and OpenVINO would add about 0.9 s
    to each command and to each stop of the service, for nothing. Output that cannot be written (a full disk) is an
    error (exit 120, as Python's own exit reports it); a reader that went away (``monitor history | head``) is not."""
    try:
        code = main()
    except SystemExit as exc:  # --help, --version, a usage error
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
    except BrokenPipeError:
        code = 1
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
            raise
        print(f"monitor: error: cannot write: {exc.strerror}", file=sys.stderr)
        code = 120
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:
            pass
        except (OSError, ValueError) as exc:
            try:
                os.write(2, f"monitor: error: cannot write the output: {exc}\n".encode())
            except OSError:
                pass
            code = code or 120
    os._exit(code)

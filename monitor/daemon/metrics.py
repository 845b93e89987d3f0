"""Every Prometheus metric of the daemon, declared in one place on an injected registry.

Names carry the ``monitor_`` namespace and base-unit suffixes; there are no per-image labels. Every scraped sample
carries the constant label ``line`` (``service.line``). Counters start from
the ledger's totals, so after a restart they agree with the ledger (and never go backwards for Prometheus).
"""

from __future__ import annotations

import platform
import ssl
import threading

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    MetricsHandler,
    disable_created_metrics,
)
from prometheus_client.metrics_core import Metric

from monitor import __version__
from monitor.errors import MonitorError
from monitor.extras import installed
from monitor.kinds import FailureKind
from monitor.ledger import LABEL_KINDS
from monitor.model.defects import VERDICTS
from monitor.model.mismatch import MISMATCH_REASONS
from monitor.web.server import GuardedServer, server_tls

# seconds; the scoring path runs in about 0.5 s on 2 CPU cores, a backlog can push end-to-end into minutes
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
# defect coverage (ratio); dense around the usual alarm thresholds (0.1% by default)
COVERAGE_BUCKETS = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
# metres: a fibre's mean diameter per image, from 50 nm to 20 um (electrospun fibres: tens of nm to a few um)
DIAMETER_BUCKETS = (5e-8, 1e-7, 1.5e-7, 2e-7, 3e-7, 4e-7, 5e-7, 6e-7, 8e-7, 1e-6, 1.5e-6, 2e-6, 3e-6, 5e-6, 1e-5,
                    2e-5)
# failures that are not about the file: out of memory, a CUDA/torch error, anything else
FAILURE_KINDS = tuple(FailureKind)

# a scrape connection: seconds per read or write, and in all (Prometheus' default scrape_timeout is 10 s)
SCRAPE_TIMEOUT, SCRAPE_DEADLINE = 10.0, 20.0

# name, type, help, labels: the table the README documents
TABLE = (
    ("images_received_total", Counter, "Complete images recorded in the ledger", ()),
    ("images_processed_total", Counter, "Images scored, by verdict", ("verdict",)),
    ("images_failed_total", Counter, "Images that could not be scored, by reason", ("reason",)),
    ("scoring_seconds", Histogram, "Time to read and score one image", ()),
    ("end_to_end_seconds", Histogram, "Time from the file being complete to its result being recorded", ()),
    ("last_coverage_ratio", Gauge, "Defect coverage (defect pixels / image pixels) of the last scored image", ()),
    ("coverage_ratio", Histogram, "Defect coverage of every scored image (none is lost between scrapes)", ()),
    ("coverage_threshold_ratio", Gauge, "Configured alarm.coverage_threshold", ()),
    ("alarm", Gauge, "1 while the defect alarm is raised, else 0", ()),
    ("alarms_total", Counter, "Images that raised the defect alarm", ()),
    ("queue_depth", Gauge, "Images recorded and waiting to be scored", ()),
    ("last_processed_timestamp_seconds", Gauge, "Unix time of the last recorded result", ()),
    ("last_received_timestamp_seconds", Gauge, "Unix time the last complete image was recorded", ()),
    ("budget_seconds", Gauge, "Configured production-time budget per image", ()),
    ("expected_interval_seconds", Gauge, "Configured usual time between two images of the line", ()),
    ("budget_overruns_total", Counter, "Images whose scoring took longer than the budget", ()),
    ("output_bytes", Gauge, "Bytes of overlays and result files the daemon keeps in output.dir", ()),
    ("worker_healthy", Gauge, "1 while the scoring worker makes progress, else 0", ()),
    ("watch_folder_ok", Gauge, "1 while watch.dir exists and is watched, else 0", ()),
    ("ledger_errors_total", Counter, "Ledger writes refused (a full disk): images re-scanned, results retried", ()),
    ("labels_total", Counter, "Operator labels recorded (web page or monitor label), by kind", ("kind",)),
    ("web_auth_failures_total", Counter, "Wrong passwords sent to the results page, by kind (basic auth, write)",
     ("kind",)),
    ("mismatches_total", Counter, "Images that do not fit the model (verdict mismatch), by reason", ("reason",)),
    ("drift_ratio", Gauge, "Score level of the recent clean images over that of the validation images (1 = as "
     "fitted; NaN until drift.min_images)", ()),
    ("drift_images", Gauge, "Clean images in the drift window", ()),
    ("fibre_diameter_meters", Histogram, "Mean fibre diameter of every measured image (when the pixel size is known)",
     ()),
    ("fibre_last_diameter_meters", Gauge, "Mean fibre diameter of the last measured image (NaN: pixel size unknown)",
     ()),
    ("fibre_last_diameter_pixels", Gauge, "Mean fibre diameter of the last measured image, in pixels", ()),
    ("fibre_diameter_ratio", Gauge, "Process chart: mean diameter of the last fibres.window measured ok images over "
     "the training images' (1 = as fitted; NaN until fibres.min_images or without a fibre reference)", ()),
    ("fibre_diameter_lower_limit_ratio", Gauge, "Process chart: lower control limit of fibre_diameter_ratio", ()),
    ("fibre_diameter_upper_limit_ratio", Gauge, "Process chart: upper control limit of fibre_diameter_ratio", ()),
    ("fibre_window_images", Gauge, "Measured ok images in the fibre chart's window", ()),
    ("fibre_coherency_ratio", Gauge, "Orientation coherency of the last measured image (0 isotropic, 1 aligned)", ()),
    ("fibre_orientation_radians", Gauge, "Dominant fibre direction of the last measured image (x axis, y down, [0, "
     "pi))", ()),
    ("fibre_porosity_ratio", Gauge, "Share of the last measured image not covered by the top layer of fibres", ()),
    ("fibre_beads_per_square_meter", Gauge, "Beads per area of the last measured image (NaN: pixel size unknown)",
     ()),
    ("fibre_beads_total", Counter, "Beads found in measured images", ()),
    ("fibre_unmeasured_total", Counter, "Scored images whose fibres could not be measured (the result says why)",
     ()),
    ("model", Info, "The model in use", ()),
    ("web", Info, "The results page: its external URL (alert annotations link to it)", ()),
    ("build", Info, "Software versions", ()),
)


class MetricsError(MonitorError, RuntimeError):
    pass


class _LineLabelled:
    """The registry as scraped: every sample carries ``line="<service.line>"``, one constant label, so that the line's
    name lives in one place (the monitor's configuration), not in each Prometheus scrape configuration too."""

    def __init__(self, metrics: "Metrics", names: set[str] | None = None):
        self.metrics = metrics
        self.names = names  # only these samples (a scrape with ?name[]=...), None = all

    def collect(self):
        line = self.metrics.line
        for fam in self.metrics.registry.collect():
            out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            out.samples = [s._replace(labels={"line": line, **s.labels}) for s in fam.samples
                           if self.names is None or s.name in self.names]
            if out.samples or self.names is None:
                yield out

    def restricted_registry(self, names) -> "_LineLabelled":
        return _LineLabelled(self.metrics, set(names))


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, namespace: str = "monitor", line: str = "line1"):
        self.line = line  # the constant `line` label of every scraped sample (service.line)
        disable_created_metrics()  # no *_created series: they double the output and no panel or rule uses them
        self.registry = registry or CollectorRegistry()
        for name, kind, doc, labels in TABLE:
            kw = {}
            if kind is Histogram:
                kw["buckets"] = {"coverage_ratio": COVERAGE_BUCKETS,
                                 "fibre_diameter_meters": DIAMETER_BUCKETS}.get(name, LATENCY_BUCKETS)
            setattr(self, name, kind(name, doc, labels, namespace=namespace, registry=self.registry, **kw))
        for v in VERDICTS:
            self.images_processed_total.labels(verdict=v)
        for k in FAILURE_KINDS:
            self.images_failed_total.labels(reason=k)
        for k in LABEL_KINDS:
            self.labels_total.labels(kind=k)
        for k in MISMATCH_REASONS:
            self.mismatches_total.labels(reason=k)
        for k in ("basic", "write"):  # web.auth.AUTH_KINDS: the metrics use the page's server, not its passwords
            self.web_auth_failures_total.labels(kind=k)
        for g in (self.drift_ratio, self.fibre_last_diameter_meters, self.fibre_last_diameter_pixels,
                  self.fibre_diameter_ratio, self.fibre_diameter_lower_limit_ratio,
                  self.fibre_diameter_upper_limit_ratio, self.fibre_coherency_ratio, self.fibre_orientation_radians,
                  self.fibre_porosity_ratio, self.fibre_beads_per_square_meter):
            g.set(float("nan"))  # nothing measured yet
        # the installed distributions' versions, "" when not installed (torch on a line PC without the fitting extra)
        versions = {dist: installed(dist) or "" for dist in ("torch", "openvino")}
        self.build.info({"version": __version__, "python": platform.python_version(), **versions})
        self._server = None

    def restore(self, totals: dict) -> None:
        """Start the counters from the ledger (see ``Ledger.totals``)."""
        self.images_received_total.inc(totals["received"])
        for verdict, n in totals["done"].items():
            self.images_processed_total.labels(verdict=verdict or "no-threshold").inc(n)
        for kind, n in totals["failed"].items():
            self.images_failed_total.labels(reason=kind if kind in FAILURE_KINDS else FailureKind.INTERNAL).inc(n)
        self.alarms_total.inc(totals["alarms"])
        for reason, n in totals.get("mismatches", {}).items():
            if reason in MISMATCH_REASONS:
                self.mismatches_total.labels(reason=reason).inc(n)
        self.queue_depth.set(totals["pending"])
        # "time since the last image" must not jump to decades after a restart
        if totals.get("last_seen"):
            self.last_received_timestamp_seconds.set(totals["last_seen"])
        if totals.get("last_finished"):
            self.last_processed_timestamp_seconds.set(totals["last_finished"])

    def set_model(self, model_id: str | None, method: str, backbone: str, runtime: str = "torch") -> None:
        self.model.info({"model_id": model_id or "", "method": method, "backbone": backbone, "runtime": runtime})

    def set_web(self, external_url: str) -> None:
        """Announce the results page's URL ("" when the page is off); the defect alerts link to it."""
        self.web.info({"external_url": external_url.rstrip("/")})

    # --------------------------------------------------------------------------------------------------- server
    def serve(self, address: str, port: int, certfile: str = "", keyfile: str = "") -> int:
        """Start the /metrics endpoint; returns the bound port (useful with port 0)."""
        try:
            tls = server_tls(certfile, keyfile) if certfile else None
            handler = type("_Metrics", (MetricsHandler,), {"registry": _LineLabelled(self), "timeout": SCRAPE_TIMEOUT})
            server = GuardedServer((address, port), handler, tls, name="metrics endpoint", timeout=SCRAPE_TIMEOUT,
                                   deadline=SCRAPE_DEADLINE, max_connections=32, per_client=8)
            threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        except ssl.SSLError as exc:
            raise MetricsError(f"metrics endpoint: cannot load metrics.certfile {certfile} / metrics.keyfile "
                               f"{keyfile}: {exc}") from None
        except OSError as exc:
            raise MetricsError(f"metrics endpoint {address}:{port}: {exc.strerror or exc} "
                               "(metrics.address / metrics.port / metrics.certfile)") from None
        self._server = server
        return server.server_address[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

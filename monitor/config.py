"""Configuration: one frozen dataclass per section, read with ``yaml.safe_load``.

YAML keys equal constructor keyword names. Unknown keys and bad values are rejected with a message that names
the key and what is allowed. With no file, the dataclass defaults apply; ``config.yaml`` at the project root
spells out exactly those defaults (a test keeps them equal).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from monitor.errors import MonitorError
from monitor.model.defects import DefectConfig
from monitor.model.fibres import FibreConfig
from monitor.model.images import ImageLimits
from monitor.model.methods import (
    METHOD_NAMES,
    PRECISIONS,
    RUNTIMES,
    DFRConfig,
    PatchDictionaryConfig,
    PIADEConfig,
    SSIMAutoencoderConfig,
)
from monitor.model.mismatch import MismatchConfig
from monitor.model.threshold import ThresholdConfig
from monitor.passwords import parse_hash
from monitor.times import parse_duration


class ConfigError(MonitorError, ValueError):
    pass


@dataclass(frozen=True)
class ModelSection:
    path: str = "model"  # the fitted model directory the daemon loads (`monitor fit --out`)
    method: str = "patch_dictionary"
    device: str = "auto"
    runtime: str = "auto"  # the CPU forward pass: auto (OpenVINO when installed, else torch) | openvino | torch
    precision: str = "f32"  # the inference graph's arithmetic on the CPU: f32 | bf16 | auto (methods.PRECISIONS)
    normalize: bool = True  # intensities brought to the training images' before the features (quality.normalize)
    clip: tuple[float, ...] = (0.15, 0.85)  # ... and clipped to these quantiles of theirs ([0, 1]: not clipped)
    patch_dictionary: PatchDictionaryConfig = field(default_factory=PatchDictionaryConfig)
    ssim_autoencoder: SSIMAutoencoderConfig = field(default_factory=SSIMAutoencoderConfig)
    dfr: DFRConfig = field(default_factory=DFRConfig)
    piade: PIADEConfig = field(default_factory=PIADEConfig)

    def __post_init__(self):
        if self.method not in METHOD_NAMES:
            raise ValueError(f"model.method must be one of {', '.join(METHOD_NAMES)}, got {self.method!r}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"model.device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"model.runtime must be one of {', '.join(RUNTIMES)}, got {self.runtime!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"model.precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        object.__setattr__(self, "clip", tuple(self.clip))
        if len(self.clip) != 2 or not 0 <= self.clip[0] < 0.5 < self.clip[1] <= 1:
            raise ValueError(f"model.clip must be two quantiles, the first in [0, 0.5), the second in (0.5, 1], "
                             f"got {list(self.clip)}")

    @property
    def method_config(self):
        return getattr(self, self.method)


@dataclass(frozen=True)
class AlarmSection:
    coverage_threshold: float = 0.001  # defect pixels / image pixels above which an image is "defect"
    # also "defect" when one defect is larger than max_defect_area pixels (0 = off) and its peak score stands
    # peak_margin over the map threshold (relative: 0.06 = 6%; 0 = any peak). The default catches compact defects
    # under the coverage threshold (NanoTWICE: 2 more of the 40) and none of the clean images' threshold-high specks
    # (their peaks stay within 5% of it under every routine change; README "Alarm operating point")
    max_defect_area: int = 100
    peak_margin: float = 0.06
    clear_after: int = 1  # consecutive clean images that clear the alarm

    def __post_init__(self):
        if not 0 <= self.coverage_threshold < 1:
            raise ValueError(f"alarm.coverage_threshold must be in [0, 1), got {self.coverage_threshold}")
        if self.max_defect_area < 0:
            raise ValueError(f"alarm.max_defect_area must be >= 0, got {self.max_defect_area}")
        if not 0 <= self.peak_margin < 10:
            raise ValueError(f"alarm.peak_margin must be in [0, 10), got {self.peak_margin}")
        if self.clear_after < 1:
            raise ValueError(f"alarm.clear_after must be >= 1, got {self.clear_after}")


@dataclass(frozen=True)
class DriftSection:
    window: int = 50  # the last this many clean (ok) images of the model in use make the drift gauge
    min_images: int = 20  # fewer clean images than this: the gauge is NaN (not enough to say)

    def __post_init__(self):
        if not 1 <= self.min_images <= self.window:
            raise ValueError(f"drift.min_images must be in 1..drift.window ({self.window}), got {self.min_images}")


@dataclass(frozen=True)
class FibreSection:
    """The mat's figures of every judged image (monitor.model.fibres) and the process chart of its mean diameter."""

    enabled: bool = True  # measure the fibres of every scored image (40 to 65 ms per 1024x700 image on 2 cores)
    window: int = 20  # the chart: the mean diameter of the last this many measured ok images of the model in use ...
    min_images: int = 5  # ... once it holds this many (fewer: the gauge is NaN)
    sigmas: float = 3.0  # control limits: the training images' mean +- sigmas x their image-to-image sd / sqrt(window)
    min_band: float = 0.05  # ... and never closer than this share of the mean (the measurement's own spread)
    measure: FibreConfig = field(default_factory=FibreConfig)

    def __post_init__(self):
        if not 1 <= self.min_images <= self.window:
            raise ValueError(f"fibres.min_images must be in 1..fibres.window ({self.window}), got {self.min_images}")
        if not self.sigmas > 0:
            raise ValueError(f"fibres.sigmas must be > 0, got {self.sigmas}")
        if not 0 <= self.min_band < 1:
            raise ValueError(f"fibres.min_band must be in [0, 1), got {self.min_band}")


OBSERVERS = ("native", "polling")
SYMLINKS = ("inside", "never", "any")
OVERLAYS = ("alarms", "all", "none")


@dataclass(frozen=True)
class WatchSection:
    dir: str = "export"  # the microscope export folder; only ever read
    patterns: tuple[str, ...] = ("*.tif", "*.tiff", "*.png")  # file names to take (case-insensitive)
    ignore: tuple[str, ...] = ("*.tmp", "*.part", "*.partial", "~*")  # temporary names; hidden files always ignored
    observer: str = "native"  # native: close-after-write and rename events (inotify) | polling: network shares
    settle_seconds: float = 2.0  # polling (and start-up scan): size and mtime unchanged this long = complete
    poll_seconds: float = 1.0  # polling observer interval
    recursive: bool = False
    queue_size: int = 10000  # events waiting to be recorded; on overflow the folder is re-scanned
    symlinks: str = "inside"  # symbolic links: inside (followed when they stay in watch.dir) | never | any
    rescan_seconds: float = 300.0  # a full re-scan this often catches images whose events were lost (0 = off)
    # images already in the folder when the ledger is new (first start, a lost ledger): all (scored) | new (none
    # scored) | a duration (those modified within it before the first start are scored, older ones not)
    backlog: str = "24h"

    def __post_init__(self):
        object.__setattr__(self, "patterns", tuple(self.patterns))
        object.__setattr__(self, "ignore", tuple(self.ignore))
        if self.observer not in OBSERVERS:
            raise ValueError(f"watch.observer must be one of {', '.join(OBSERVERS)}, got {self.observer!r}")
        if not self.patterns:
            raise ValueError("watch.patterns must name at least one pattern")
        if self.settle_seconds < 0 or self.poll_seconds <= 0:
            raise ValueError("watch.settle_seconds must be >= 0 and watch.poll_seconds > 0")
        if self.queue_size < 1:
            raise ValueError(f"watch.queue_size must be >= 1, got {self.queue_size}")
        if self.rescan_seconds < 0:
            raise ValueError(f"watch.rescan_seconds must be >= 0, got {self.rescan_seconds}")
        if self.symlinks not in SYMLINKS:
            raise ValueError(f"watch.symlinks must be one of {', '.join(SYMLINKS)}, got {self.symlinks!r}")
        self.backlog_seconds  # checked here, at load

    @property
    def backlog_seconds(self) -> float | None:
        """``watch.backlog`` in seconds: None = all, 0 = new."""
        text = str(self.backlog).strip()
        if text == "all":
            return None
        if text == "new":
            return 0.0
        try:
            seconds = parse_duration(text, "watch.backlog")
        except ValueError:
            seconds = 0.0
        if not seconds:
            raise ValueError(f"watch.backlog must be all, new or a duration such as 24h or 7d, got {self.backlog!r}")
        return seconds


@dataclass(frozen=True)
class OutputSection:
    dir: str = "output"  # overlays and result JSON (never inside watch.dir)
    overlays: str = "alarms"  # alarms | all | none
    ledger: str = "ledger.sqlite"  # the SQLite ledger of every image
    max_bytes: int = 5_000_000_000  # overlays and result files kept, oldest deleted first (0 = no limit)
    max_age: str = "90d"  # ... and none older than this (s, m, h, d, w; "0" = no limit); ledger rows stay

    def __post_init__(self):
        if self.overlays not in OVERLAYS:
            raise ValueError(f"output.overlays must be one of {', '.join(OVERLAYS)}, got {self.overlays!r}")
        if self.max_bytes < 0:
            raise ValueError(f"output.max_bytes must be >= 0 (0 = no limit), got {self.max_bytes}")
        parse_duration(self.max_age, "output.max_age")

    @property
    def max_age_seconds(self) -> float:
        return parse_duration(self.max_age, "output.max_age")


@dataclass(frozen=True)
class MetricsSection:
    enabled: bool = True
    address: str = "127.0.0.1"  # bind address of the /metrics endpoint
    port: int = 9808  # 0 = any free port (tests)
    certfile: str = ""  # TLS when both certfile and keyfile are set
    keyfile: str = ""

    def __post_init__(self):
        if not 0 <= self.port <= 65535:
            raise ValueError(f"metrics.port must be in 0..65535, got {self.port}")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("metrics.certfile and metrics.keyfile go together")


RESULTS_MAX = 500  # rows one list page may show (the `limit` filter's maximum)


@dataclass(frozen=True)
class WebSection:
    enabled: bool = True
    address: str = "127.0.0.1"  # bind address of the results page
    port: int = 9880  # 0 = any free port (tests)
    certfile: str = ""  # TLS when both certfile and keyfile are set
    keyfile: str = ""
    username: str = ""  # HTTP basic auth when both username and password_hash are set
    password_hash: str = ""  # pbkdf2_sha256$<iterations>$<salt b64>$<hash b64> (`monitor hash-password`)
    external_url: str = ""  # the URL operators reach the page at; the alerts link there ("" = no link)
    results: int = 50  # rows on the list page by default
    write_password_hash: str = ""  # operators label results on the page with this password ("" = labelling off)
    # host names the page answers to besides IP addresses, localhost, this PC's names and external_url's host
    # (a request naming another Host is refused: DNS rebinding)
    allowed_hosts: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "allowed_hosts", tuple(h.lower().rstrip(".") for h in self.allowed_hosts))
        if not 0 <= self.port <= 65535:
            raise ValueError(f"web.port must be in 0..65535, got {self.port}")
        if bool(self.certfile) != bool(self.keyfile):
            raise ValueError("web.certfile and web.keyfile go together")
        if bool(self.username) != bool(self.password_hash):
            raise ValueError("web.username and web.password_hash go together (both set: basic auth; both empty: none)")
        if ":" in self.username or any(not c.isprintable() for c in self.username):
            raise ValueError("web.username must not contain ':' or control characters")
        if self.password_hash:
            try:
                parse_hash(self.password_hash)
            except ValueError as exc:
                raise ValueError(f"web.password_hash: {exc}") from None
        if self.write_password_hash:
            try:
                parse_hash(self.write_password_hash)
            except ValueError as exc:
                raise ValueError(f"web.write_password_hash: {exc}") from None
        url = self.external_url
        if url and (not url.startswith(("http://", "https://")) or any(c.isspace() or c in "\"'<>" for c in url)):
            raise ValueError(f"web.external_url must be empty or an http:// or https:// URL, got {url!r}")
        if not 1 <= self.results <= RESULTS_MAX:
            raise ValueError(f"web.results must be in 1..{RESULTS_MAX}, got {self.results}")


@dataclass(frozen=True)
class ServiceSection:
    line: str = "line1"  # name of the production line (metrics and overlays)
    budget_seconds: float = 2.0  # production-time budget per image; slower images count as overruns
    batch: int = 0  # images scored together when they queue up (0 = auto: 8 on a GPU, 1 on CPU)
    max_attempts: int = 3  # an image that was being scored during this many crashes is failed, not retried
    stall_seconds: float = 120.0  # no worker progress for this long = unhealthy (no systemd watchdog ping)
    expected_interval_seconds: float = 300.0  # the line's usual time between two images (the no-image alert)

    def __post_init__(self):
        if self.budget_seconds <= 0 or self.stall_seconds <= 0 or self.expected_interval_seconds <= 0:
            raise ValueError("service.budget_seconds, stall_seconds and expected_interval_seconds must be > 0")
        if self.batch < 0 or self.max_attempts < 1:
            raise ValueError("service.batch must be >= 0 and service.max_attempts >= 1")


@dataclass(frozen=True)
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    defects: DefectConfig = field(default_factory=DefectConfig)
    alarm: AlarmSection = field(default_factory=AlarmSection)
    mismatch: MismatchConfig = field(default_factory=MismatchConfig)
    drift: DriftSection = field(default_factory=DriftSection)
    fibres: FibreSection = field(default_factory=FibreSection)
    image: ImageLimits = field(default_factory=ImageLimits)
    watch: WatchSection = field(default_factory=WatchSection)
    output: OutputSection = field(default_factory=OutputSection)
    metrics: MetricsSection = field(default_factory=MetricsSection)
    web: WebSection = field(default_factory=WebSection)
    service: ServiceSection = field(default_factory=ServiceSection)

    def __post_init__(self):
        for key, value in (("output.dir", self.output.dir), ("output.ledger", self.output.ledger)):
            if in_export(value, self.watch.dir):
                raise ValueError(f"{key} ({value}) must not lie inside the export folder watch.dir ({self.watch.dir}); "
                                 "the monitor never writes there")


def in_export(path: str | Path, watch_dir: str | Path) -> bool:
    """True when ``path`` is the export folder ``watch_dir`` or lies inside it (links resolved): the monitor never
    writes there."""
    return Path(path).resolve().is_relative_to(Path(watch_dir).resolve())


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'configuration'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{where or 'configuration'}: unknown key {unknown[0]!r}; allowed: {', '.join(fields)}")
    kwargs = {}
    for name, value in data.items():
        f = fields[name]
        key = f"{where}.{name}" if where else name
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value, key)
        else:
            kwargs[name] = _coerce(key, value, default)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where or 'configuration'}: {exc}") from None


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Check a value against the type of its default; ints are accepted where floats are expected."""
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):  # a number is taken as its text (`max_age: 0`, `line: 3`)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        kind = type(default[0]) if default else str  # tuples of names, of sizes or of levels
        kinds = (int, float) if kind is float else kind
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, kinds) and not isinstance(v, bool) for v in value)
        value = tuple(kind(v) for v in value) if ok else value
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{key}: expected {type(default).__name__}, got {value!r}")
    return value


def parse_config(data: Any) -> Config:
    return _build(Config, data, "")


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read ``path`` (None: defaults) and apply ``key.sub=value`` overrides (values parsed as YAML)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"configuration file not found: {path}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.sub=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return parse_config(data)

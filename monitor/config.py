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

from .defects import DefectConfig
from .images import ImageLimits
from .scorers import METHODS, PatchDictionaryConfig
from .threshold import ThresholdConfig


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class ModelSection:
    method: str = "patch_dictionary"
    device: str = "auto"
    patch_dictionary: PatchDictionaryConfig = field(default_factory=PatchDictionaryConfig)

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"model.method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.device != "auto" and self.device != "cpu" and not self.device.startswith("cuda"):
            raise ValueError(f"model.device must be auto, cpu or cuda[:N], got {self.device!r}")

    @property
    def method_config(self):
        return getattr(self, self.method)


@dataclass(frozen=True)
class AlarmSection:
    coverage_threshold: float = 0.001  # defect pixels / image pixels above which an image is "defect"

    def __post_init__(self):
        if not 0 <= self.coverage_threshold < 1:
            raise ValueError(f"alarm.coverage_threshold must be in [0, 1), got {self.coverage_threshold}")


@dataclass(frozen=True)
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    threshold: ThresholdConfig = field(default_factory=ThresholdConfig)
    defects: DefectConfig = field(default_factory=DefectConfig)
    alarm: AlarmSection = field(default_factory=AlarmSection)
    image: ImageLimits = field(default_factory=ImageLimits)


def _build(cls, data: Any, where: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'configuration'}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
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
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
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

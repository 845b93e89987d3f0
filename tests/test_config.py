import dataclasses

import pytest
import yaml

from monitor.config import Config, ConfigError, load_config, parse_config
from tests.conftest import ROOT


def test_shipped_config_yaml_equals_the_defaults():
    assert load_config(ROOT / "config.yaml") == Config()


def test_every_default_key_is_in_config_yaml():
    data = yaml.safe_load((ROOT / "config.yaml").read_text())

    def keys(obj, prefix=""):
        for f in dataclasses.fields(obj):
            if not f.init:  # derived, not a setting
                continue
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                yield from keys(v, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}"

    for key in keys(Config()):
        node = data
        for part in key.split("."):
            assert part in node, f"{key} missing from config.yaml"
            node = node[part]


@pytest.mark.parametrize("data,match", [
    ({"modle": {}}, "unknown key 'modle'"),
    ({"model": {"patch_dictionary": {"k": "ten"}}}, "model.patch_dictionary.k: expected int"),
    ({"model": {"patch_dictionary": {"mode": "sparse"}}}, "mode must be one of"),
    ({"model": {"method": "magic"}}, "model.method must be one of"),
    ({"threshold": {"target_fpr": 2}}, "target_fpr must be in"),
    ({"alarm": {"coverage_threshold": -1}}, "coverage_threshold"),
    ({"image": {"crop_bottom": -3}}, "crop_bottom"),
    ({"model": {"ssim_autoencoder": {"warmup": -1}}}, "warmup must be >= 0"),
    ({"model": {"patch_dictionary": {"border_rings": -1}}}, "border_rings must be >= 0"),
    ({"web": {"certfile": "cert.pem"}}, "web.certfile and web.keyfile go together"),
    ({"web": {"username": "operator"}}, "web.username and web.password_hash go together"),
    ({"web": {"results": 501}}, "web.results must be in 1..500"),
    ({"web": {"external_url": "linepc-3:9880"}}, "web.external_url must be empty or an http"),
    ([1, 2], "expected a mapping"),
])
def test_bad_configs_are_rejected_with_the_key(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(data)


def test_overrides():
    cfg = load_config(None, ["model.patch_dictionary.mode=crop", "model.patch_dictionary.k=10"])
    assert cfg.model.patch_dictionary.mode == "crop" and cfg.model.patch_dictionary.k == 10

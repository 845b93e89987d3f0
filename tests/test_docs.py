"""The docs cannot drift from the code: every `monitor <command> --flag` they name exists in that command's parser,
every configuration key they name exists, every relative link and picture resolves, and the version they print is
the package's."""

from __future__ import annotations

import dataclasses
import re

import pytest

from monitor import __version__
from monitor.cli import build_parser
from monitor.config import Config
from tests.conftest import ROOT

DOCS = sorted([ROOT / "README.md", ROOT / "ops" / "README.md", ROOT / "systemd" / "README.md",
               *(ROOT / "docs").glob("*.md")])
SECTIONS = tuple(f.name for f in dataclasses.fields(Config))


def _commands() -> dict[str, set[str]]:
    """{subcommand: its option strings} from the real parser."""
    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    return {name: {s for a in p._actions for s in a.option_strings} for name, p in sub.choices.items()}


def flags_named(text: str, commands: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(command, --flag) for every flag written after `monitor <command>` on the same line, up to the end of the
    command (a backtick, a table cell's or a shell pipe's " | ", a comment, a semicolon or &&)."""
    out = []
    for m in re.finditer(r"\bmonitor ([a-z][a-z-]*)([^\n`#;&]*)", text):
        if m.group(1) in commands:
            span = re.split(r" \| | \|\| ", m.group(2))[0]  # a table's next cell, a shell pipe ("IMAGE|DIR" stays)
            out += [(m.group(1), f) for f in re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", span)]
    return out


def _has_key(path: list[str]) -> bool:
    node = Config()
    for part in path:
        if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
            return False
        node = getattr(node, part)
    return True


def _code_name(dotted: str) -> bool:
    """``defects.decide``: a function of a module (monitor/model/defects.py), not a configuration key."""
    module, _, name = dotted.rpartition(".")
    files = [ROOT / "monitor" / f"{module}.py", ROOT / "monitor" / "model" / f"{module}.py",
             ROOT / "monitor" / "daemon" / f"{module}.py"]
    return any(f.is_file() and re.search(rf"^(def|class) {name}\b", f.read_text(), re.M) for f in files)


def keys_named(text: str) -> list[str]:
    """Configuration keys written as section.key (section.sub.key): `alarm.coverage_threshold`, ..., not file names
    (metrics.py), Python names (monitor.daemon.metrics) nor a module's functions (defects.decide)."""
    pattern = rf"(?<![\w./-])((?:{'|'.join(SECTIONS)})(?:\.[a-z_][a-z0-9_]*)+)(?![\w(/-]|\.[a-z])"
    return [k for k in re.findall(pattern, text)
            if not k.endswith((".py", ".md", ".yml", ".yaml", ".json")) and not _code_name(k)]


def links_named(text: str) -> list[str]:
    """Relative link and picture targets of a markdown text (no URL, no anchor of the same page)."""
    out = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        out.append(target.split("#")[0])
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_flag_the_docs_name_exists(doc):
    commands = _commands()
    bad = [(c, f) for c, f in flags_named(doc.read_text(), commands) if f not in commands[c]]
    assert not bad, f"{doc.name}: flags no command has: {sorted(set(bad))}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_configuration_key_the_docs_name_exists(doc):
    bad = sorted({k for k in keys_named(doc.read_text()) if not _has_key(k.split("."))})
    assert not bad, f"{doc.name}: configuration keys that do not exist: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_picture_resolves(doc):
    bad = [t for t in links_named(doc.read_text()) if not (doc.parent / t).exists()]
    assert not bad, f"{doc.name}: links to nothing: {bad}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_the_version_the_docs_print_is_the_package_s(doc):
    """Recorded transcripts (```text blocks, each introduced with the day and version it was recorded with) keep
    the version they printed; everything else names the package's."""
    text = re.sub(r"```text\n.*?```", "", doc.read_text(), flags=re.S)
    printed = set(re.findall(r"\bmonitor (\d+\.\d+\.\d+) \(Python", text))
    assert printed <= {__version__}, f"{doc.name}: prints version {sorted(printed)}, the package is {__version__}"


def test_the_check_catches_a_wrong_flag_a_wrong_key_a_dead_link_and_an_old_version():
    commands = _commands()
    text = ("Run `monitor measure IMAGE|DIR --overlay out --no-such-flag`; set `alarm.no_such_key`; see "
            "[x](docs/no-such-page.md). | `monitor history` | --not-its-flag |")
    assert ("measure", "--no-such-flag") in flags_named(text, commands)
    assert ("measure", "--overlay") in flags_named(text, commands)
    assert all(c != "history" for c, _ in flags_named(text, commands))  # the next table cell is not its
    assert [k for k in keys_named(text) if not _has_key(k.split("."))] == ["alarm.no_such_key"]
    assert _has_key(["fibres", "measure", "bead_ratio"]) and not _has_key(["fibres", "nope"])
    assert links_named(text) == ["docs/no-such-page.md"] and not (ROOT / "docs/no-such-page.md").exists()
    assert keys_named("see monitor/daemon/metrics.py, monitor.daemon.metrics and defects.decide") == []

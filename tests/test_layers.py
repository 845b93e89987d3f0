"""The import contract of the package (docs/architecture.md): each module imports only from its own layer or the
layers below it, lazy imports inside functions included. The model side knows nothing of the daemon, the results
page or the commands; the results page nothing of the daemon that serves it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "monitor"

# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS = (
    ("base", ("monitor", "monitor.files", "monitor.passwords", "monitor.ledger", "monitor.times", "monitor.extras",
              "monitor.errors", "monitor.kinds")),
    ("model", ("monitor.model",)),
    ("config", ("monitor.config",)),
    ("judge", ("monitor.judge", "monitor.document")),
    ("web", ("monitor.web",)),
    ("daemon", ("monitor.daemon",)),
    ("commands", ("monitor.commands",)),
    ("cli", ("monitor.cli", "monitor.__main__")),
)


def layer_of(module: str) -> int:
    best, rank = -1, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    """``name`` (monitor.x.y) is a module or a package of the tree at ``root``."""
    f = root.parent / name.replace(".", "/")
    return f.with_suffix(".py").exists() or (f / "__init__.py").exists()


def imports(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import of the package's own modules in ``path``: import statements
    anywhere (inside functions too), relative ones resolved, and ``importlib.import_module("monitor...")``."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # "from monitor.model import quality" imports the module monitor.model.quality, "from monitor import
            # daemon" the package monitor.daemon
            found += [(node.lineno, f"{mod}.{a.name}" if _is_module(f"{mod}.{a.name}", root) else mod)
                      for a in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
              and not node.args[0].value.startswith(".")):
            found.append((node.lineno, node.args[0].value))
    return sorted((line, m) for line, m in found if m == "monitor" or m.startswith("monitor."))


def violations(root: Path = PACKAGE) -> list[str]:
    out = []
    for path in sorted(root.rglob("*.py")):
        mine = layer_of(module_name(path, root))
        if mine < 0:
            out.append(f"{path.relative_to(root.parent)}: in no layer (add it to LAYERS and docs/architecture.md)")
            continue
        for line, mod in imports(path, root):
            theirs = layer_of(mod)
            if not _is_module(mod, root) or theirs < 0:
                out.append(f"{path.relative_to(root.parent)}:{line}: imports {mod}, which is no module of the package")
            elif theirs > mine:
                out.append(f"{path.relative_to(root.parent)}:{line}: the {LAYERS[mine][0]} layer imports {mod} "
                           f"of the {LAYERS[theirs][0]} layer above it")
    return out


def test_every_module_imports_only_from_its_layer_or_below():
    assert violations() == []


def test_the_contract_catches_a_wrong_import(tmp_path):
    """The check itself: a model module that imports the daemon, even lazily inside a function, is reported."""
    pkg = tmp_path / "monitor"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("")
    (pkg / "model" / "overlay.py").write_text("def f():\n    from monitor.daemon.worker import Worker\n")
    (pkg / "model" / "quality.py").write_text("from ..web import site\nfrom . import overlay\n")
    (pkg / "model" / "images.py").write_text("import importlib\nfrom monitor import daemon\nfrom .. import web\n"
                                             "importlib.import_module('monitor.daemon.worker')\n"
                                             "from monitor.worker import Worker\n")
    for sub in ("daemon", "web"):
        (pkg / sub).mkdir()
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "daemon" / "worker.py").write_text("")
    (pkg / "web" / "site.py").write_text("")
    assert violations(pkg) == [
        "monitor/model/images.py:2: the model layer imports monitor.daemon of the daemon layer above it",
        "monitor/model/images.py:3: the model layer imports monitor.web of the web layer above it",
        "monitor/model/images.py:4: the model layer imports monitor.daemon.worker of the daemon layer above it",
        "monitor/model/images.py:5: imports monitor.worker, which is no module of the package",
        "monitor/model/overlay.py:2: the model layer imports monitor.daemon.worker of the daemon layer above it",
        "monitor/model/quality.py:1: the model layer imports monitor.web.site of the web layer above it"]


@pytest.mark.parametrize("module, layer", [("monitor.model.scorers.dfr", "model"), ("monitor.ledger", "base"),
                                           ("monitor", "base"), ("monitor.web.site", "web")])
def test_layer_of(module, layer):
    assert LAYERS[layer_of(module)][0] == layer

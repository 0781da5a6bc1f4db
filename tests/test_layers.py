"""The layer table of docs/architecture.md, enforced: each module of unitok (and app.py) imports only its own
package, `unitok.errors`, and what its layer's row names. The table is read from the page itself, so the page
and the code cannot drift apart: a new arrow between layers is either allowed there, in words, or fails here."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
EVERYONE = ("unitok.errors",)  # user errors: every layer raises them


def layer_table(doc: Path = DOC) -> dict[str, tuple[list[str], list[str] | None]]:
    """{layer: ([module or package names it holds], [names it may import], or None for "everything")}."""
    lines = doc.read_text().splitlines()
    start = lines.index("| layer | package | holds | imports |")
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        layer, package, _, imports = (cell.strip() for cell in line.strip("|").split("|"))
        held = [_module_of(p) for p in re.findall(r"`([^`]+)`", package)]
        allowed = None if imports == "everything" else [f"unitok.{n}" for n in re.findall(r"`([^`]+)`", imports)]
        rows[layer] = (held, allowed)
    assert rows, f"{doc}: no layer table"
    return rows


def _module_of(path: str) -> str:
    """``unitok/data`` -> ``unitok.data``; ``unitok/__init__.py`` -> ``unitok``; ``app.py`` -> ``app``."""
    return path.removesuffix(".py").removesuffix("/__init__").replace("/", ".")


def modules() -> dict[str, Path]:
    found = {"app": REPO / "app.py"}
    for path in sorted((REPO / "unitok").rglob("*.py")):
        found[_module_of(str(path.relative_to(REPO)))] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The unitok modules ``path`` imports, anywhere in it (lazy imports in functions included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "unitok")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if source.split(".")[0] != "unitok":
                continue
            for alias in node.names:  # `from unitok.modalities import vq_train` imports the submodule
                sub = f"{source}.{alias.name}"
                out.add(sub if sub in known else source)
    return out


def _under(module: str, name: str) -> bool:
    return module == name or module.startswith(name + ".")


def layer_of(module: str, table) -> str | None:
    """The row holding ``module``: the longest package name it is under (a file's row names it exactly)."""
    best = None
    for layer, (held, _) in table.items():
        for name in held:
            exact = name in ("unitok", "app") or (REPO / (name.replace(".", "/") + ".py")).exists()
            if (module == name if exact else _under(module, name)) and (best is None or len(name) > len(best[1])):
                best = (layer, name)
    return best[0] if best else None


TABLE = layer_table()
MODULES = modules()


def test_the_table_places_every_module():
    unplaced = [m for m in MODULES if layer_of(m, TABLE) is None]
    assert not unplaced, f"modules no row of the layer table in {DOC.name} holds: {unplaced}"


@pytest.mark.parametrize("layer", sorted(TABLE))
def test_each_layer_imports_only_what_the_table_allows(layer):
    held, allowed = TABLE[layer]
    if allowed is None:
        return
    own = [m for m in MODULES if layer_of(m, TABLE) == layer]
    assert own, f"layer {layer}: the table names {held}, which hold no module"
    wrong = []
    for module in own:
        for target in sorted(imports(module, MODULES[module], set(MODULES))):
            if not any(_under(target, name) for name in [*held, *EVERYONE, *allowed]):
                wrong.append(f"{module} imports {target}")
    assert not wrong, (f"layer {layer} may import {[n.removeprefix('unitok.') for n in allowed]} "
                       f"({DOC.name}); found: " + "; ".join(wrong))


def test_the_checker_sees_relative_lazy_and_submodule_imports(tmp_path):
    """The rule would pass vacuously if imports went unseen: these forms must all be found."""
    src = tmp_path / "m.py"
    src.write_text("import unitok.data.store\nfrom ..tasks import outputs\n"
                   "def f():\n    from ..modalities.vocab import EOS\n    from . import formats\n")
    known = {"unitok.tasks.outputs", "unitok.tasks.formats", "unitok.modalities.vocab", "unitok.data.store"}
    assert imports("unitok.tasks.m", src, known) == {"unitok.data.store", "unitok.tasks.outputs",
                                                     "unitok.modalities.vocab", "unitok.tasks.formats"}

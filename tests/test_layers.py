"""The package's layers: the kernel library at the bottom, the models above it, the training stack
on top; nothing imports a layer above its own, and the kernel library and ``davae_ext.nn`` load
none of the training stack's heavy dependencies."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "python" / "davae_ext"
LAYERS = {"kernel": 0, "models": 1, "training": 2}
HEAVY = ("peft", "accelerate", "skimage", "sklearn", "matplotlib", "tqdm")


def layer_of(module: str) -> int:
    """davae_ext.<first part>: nn and models are the model layer, training the top, the rest the
    kernel library."""
    parts = module.split(".")
    first = parts[1] if len(parts) > 1 else ""
    return LAYERS["models"] if first in ("nn", "models") else LAYERS.get(first, LAYERS["kernel"])


def imports_of(path: Path) -> list[str]:
    """The davae_ext modules a file imports (relative imports resolved; lazy imports included)."""
    module = "davae_ext." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found += [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [m for m in found if m == "davae_ext" or m.startswith("davae_ext.")]


def test_the_layer_map_is_what_the_tree_holds():
    tops = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if not p.name.startswith(("__", "."))}
    assert {"nn", "models", "training", "ops", "reference"} <= tops


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_higher_layer(path):
    module = "davae_ext." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    own = layer_of(module.removesuffix(".__init__"))
    upward = [m for m in imports_of(path) if layer_of(m) > own]
    assert not upward, f"{module} (layer {own}) imports {upward}"


def test_kernel_library_and_nn_import_no_training_dependency():
    """With the training stack's dependencies made unimportable, the kernel library and the nn
    modules still import (and build a module)."""
    code = (
        "import sys\n"
        f"for name in {HEAVY!r}:\n"
        "    sys.modules[name] = None  # importing it raises ImportError\n"
        "import davae_ext, davae_ext.ops, davae_ext.reference, davae_ext.nn\n"
        "davae_ext.nn.DetailProjOut(8, 4, 4, 2)\n"
        f"print(sorted(m for m in {HEAVY!r} if sys.modules.get(m) is not None))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.strip() == "[]"

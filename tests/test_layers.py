"""The package layers of ``libs`` (its index docstring): no module imports from a layer above
its own, the released import paths keep working, and every package's index names its files."""
import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["run", "data", "exits", "models", "diffusion", "tasks", "evaluation", "training", "cli"]
ALIASES = {"uvit", "uvit_t2i", "autoencoder", "clip", "checkpoint", "nets"}  # thin released-path modules


def _imports(path: Path):
    """Every ``libs.*`` module a file imports, at any depth (also inside functions)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "libs":
                yield from (f"libs.{a.name}" for a in node.names)
            elif node.module.startswith("libs."):
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("libs."))


def _package_files():
    for layer in LAYERS:
        for path in sorted((ROOT / "libs" / layer).glob("*.py")):
            yield layer, path


def test_libs_holds_only_layer_packages_and_aliases():
    flat = {p.stem for p in (ROOT / "libs").glob("*.py")} - {"__init__"}
    assert flat == ALIASES
    packages = {p.name for p in (ROOT / "libs").iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYERS)


@pytest.mark.parametrize("layer,path", list(_package_files()), ids=lambda v: str(v).split("libs/")[-1])
def test_no_module_imports_upward(layer, path):
    mine = LAYERS.index(layer)
    for mod in _imports(path):
        other = mod.split(".")[1]
        assert other in LAYERS, f"{path.name} imports the alias {mod}; import the real module"
        assert LAYERS.index(other) <= mine, f"libs/{layer}/{path.name} imports {mod}, a higher layer"


def test_top_level_modules_import_no_scripts():
    for path in _package_files():
        src = path[1].read_text()
        assert "from sde import" not in src and "import dpm_solver_pp" not in src, path[1]


@pytest.mark.parametrize("layer", LAYERS)
def test_every_package_index_names_its_files(layer):
    doc = importlib.import_module(f"libs.{layer}").__doc__
    for path in (ROOT / "libs" / layer).glob("*.py"):
        if path.stem != "__init__":
            assert f"``{path.stem}``" in doc, f"libs/{layer}/__init__.py does not name {path.stem}"


def test_released_import_paths():
    from dpm_solver_pp import dpm_solver_sample
    from libs.autoencoder import FrozenAutoencoderKL, load_autoencoder  # noqa: F401
    from libs.checkpoint import load_weights
    from libs.clip import FrozenCLIPEmbedder  # noqa: F401
    from libs.nets import build_nnet
    from libs.uvit import UViT
    from libs.uvit_t2i import UViT as UViTT2I
    from sde import ContinuousNoise, DiscreteNoise, training_losses  # noqa: F401
    import libs.diffusion.dpm_solver as dpm
    import libs.models.registry as reg
    import libs.run.checkpoint as ckpt

    assert dpm_solver_sample is dpm.dpm_solver_sample
    assert load_weights is ckpt.load_weights and build_nnet is reg.build_nnet
    assert UViT.__module__ == "libs.models.uvit" and UViTT2I.__module__ == "libs.models.uvit_t2i"


def test_no_function_runs_past_60_lines():
    """Each loop reads as one page: no function of libs/ or the top-level modules is longer."""
    long = []
    for path in list((ROOT / "libs").rglob("*.py")) + list(ROOT.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(ROOT)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long

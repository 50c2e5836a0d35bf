"""The path of one sampling call (tests only): run a top-level absl script (``eval.py``) in
this process, as its ``if __name__ == '__main__'`` would (``libs.cli.flags.run``), and at
every U-ViT block it runs while sampling, record the project frames of the Python stack from
the script's entry function down to the block.

    paths = sampling_paths("eval.py", ["--config=...", ...])

One item per distinct path (the full-depth reference and each exit rule may differ):
``{"files": [repository-relative paths, the script first, each once], "frames": [(path,
function), ...]}``.
"""
import importlib.util
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def _inside(filename: str) -> bool:
    """A project file: not a test, not a library, not the one-line error guard of
    ``libs/run/errors.py`` that every script's entry function is wrapped in."""
    if filename.startswith("<"):
        return False
    p = Path(filename).resolve()
    return (p.is_relative_to(ROOT) and not p.is_relative_to(ROOT / "tests") and "site-packages" not in p.parts
            and p != ROOT / "libs/run/errors.py")


def project_frames(script: str, stack):
    """``(path, function)`` of the script, then of the project frames of ``stack`` from the
    entry function that absl's ``app.run`` calls down (the start-up above it is not the path)."""
    entry = max(i for i, f in enumerate(stack) if f.name == "_run_main")
    return [(script, "<module>")] + [(str(Path(f.filename).resolve().relative_to(ROOT)), f.name)
                                     for f in stack[entry + 1:] if _inside(f.filename)]


def _script_module(script: str):
    name = "sampling_path:" + script  # defines the script's flags once per process
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / script)
        sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[name])
    return sys.modules[name]


def sampling_paths(script: str, argv):
    """Run ``script`` with ``argv``; every distinct path that reached a block while sampling."""
    from absl import flags

    from libs.cli.flags import run
    from libs.models.uvit_core import Block

    module, paths = _script_module(script), []

    def at_block(block, args):
        stack = traceback.extract_stack()[:-1]
        if isinstance(block, Block) and any(f.name == "generate" for f in stack):
            frames = project_frames(script, stack)
            if frames not in paths:
                paths.append(frames)

    flags.FLAGS.unparse_flags()  # a fresh parse per run, as in a new process
    for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)
    sys.modules.pop("config_config", None)  # ml_collections' config module
    handle, saved_argv = torch.nn.modules.module.register_module_forward_pre_hook(at_block), sys.argv
    sys.argv = [script, *argv]  # ml_collections reads the config overrides from sys.argv
    try:
        run(module.main, argv=[script, *argv])
    except SystemExit as exc:
        assert exc.code in (0, None), f"{script} exited with {exc.code}"
    finally:
        handle.remove()
        sys.argv = saved_argv
    return [{"files": list(dict.fromkeys(p for p, _ in frames)), "frames": frames} for frames in paths]

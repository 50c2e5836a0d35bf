"""The path of one sampling call (tests only): run a top-level script (``eval.py``) in this
process and, at the first U-ViT block it runs while sampling, record the project files of the
Python stack from the script's entry function down to the block.

    python -m tests.helpers.sampling_path RESULT.json eval.py --config=... [flags]

RESULT: one item per distinct path (the full-depth reference and each exit rule may differ):
    {"files": [repository-relative paths, outermost first, each once],
     "frames": [[path, function], ... the project frames from the entry function down]}.
"""
import json
import runpy
import sys
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def project_frames(stack):
    """``(path, function)`` of the project frames (not tests, not libraries) of ``stack``,
    outermost first: the script, then the frames from its entry function down. The script's
    start-up (absl's ``app.run`` through ``libs/cli/flags.py:run`` and the one-line error guard
    of ``libs/run/errors.py``) is not part of the path."""
    def inside(f):
        if f.filename.startswith("<"):
            return False
        p = Path(f.filename).resolve()
        return (p.is_relative_to(ROOT) and not p.is_relative_to(ROOT / "tests") and "site-packages" not in p.parts
                and p != ROOT / "libs/run/errors.py")

    entry = max(i for i, f in enumerate(stack) if f.name == "_run_main")  # absl calls the entry function here
    script = next(f for f in stack if inside(f))
    frames = [script] + [f for f in stack[entry + 1:] if inside(f)]
    return [(str(Path(f.filename).resolve().relative_to(ROOT)), f.name) for f in frames]


def main(result, script, *argv):
    """Run ``script`` with ``argv``; write every distinct path that reached a block while sampling."""
    from libs.models.uvit_core import Block

    paths = []

    def at_block(module, args):
        stack = traceback.extract_stack()[:-1]
        if isinstance(module, Block) and any(f.name == "generate" for f in stack):
            frames = project_frames(stack)
            if frames not in paths:
                paths.append(frames)

    handle = torch.nn.modules.module.register_module_forward_pre_hook(at_block)
    sys.argv = [script, *argv]
    try:
        runpy.run_path(str(ROOT / script), run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        handle.remove()
    out = [{"files": list(dict.fromkeys(p for p, _ in frames)), "frames": frames} for frames in paths]
    Path(result).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(*sys.argv[1:])

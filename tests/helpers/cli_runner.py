"""Run many command lines of one CLI in one process (tests only): each case as the real
``if __name__ == '__main__'`` would (libs.cli.flags.run for absl scripts, libs.run.errors.guarded
for argparse ones), recording its exit status and stderr.

    python -m tests.helpers.cli_runner CASES.json RESULTS.json     # from the repository root

CASES: {"script": "train.py", "kind": "absl" | "argparse", "cases": [{"args": [...], "fault": ...}]}.
A fault simulates what a test cannot arrange for real here (it runs as root):
  {"enospc": "<suffix>"}   writes through libs.run.atomic to files ending in <suffix> fail: disk full
  {"erofs": "<folder>"}    creating files or folders under <folder> fails: read-only file system
"""
import contextlib
import errno
import importlib.util
import io
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class _FullDisk(io.RawIOBase):
    def __init__(self, f):
        self.f = f

    def writable(self):
        return True

    def write(self, b):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def fileno(self):
        return self.f.fileno()

    def close(self):
        self.f.close()
        super().close()


@contextlib.contextmanager
def fault(spec):
    import libs.run.atomic

    spec = spec or {}
    saved = (libs.run.atomic._open_temp, os.open, os.mkdir)
    if "enospc" in spec:
        suffix = spec["enospc"]

        def open_temp(fd):
            name = os.readlink(f"/proc/self/fd/{fd}")
            f = saved[0](fd)
            return _FullDisk(f) if suffix in Path(name).name else f

        libs.run.atomic._open_temp = open_temp
    if "erofs" in spec:
        root = str(spec["erofs"])

        def guard(fn):
            def wrapped(path, *a, **k):
                if str(os.fspath(path)).startswith(root):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
                return fn(path, *a, **k)
            return wrapped

        os.open, os.mkdir = guard(saved[1]), guard(saved[2])
    try:
        yield
    finally:
        libs.run.atomic._open_temp, os.open, os.mkdir = saved


def run_case(module, kind, script, args, spec):
    from absl import flags

    err = io.StringIO()
    argv = [script] + list(args)
    code = 0
    if kind == "absl":
        from libs.cli.flags import run
        flags.FLAGS.unparse_flags()
        for name in list(flags.FLAGS):
            if name.startswith("config."):
                delattr(flags.FLAGS, name)
    sys.argv = argv
    sys.modules.pop("config_config", None)  # ml_collections' config module: a fresh one per case, as in a new process
    with contextlib.redirect_stderr(err), fault(spec):
        try:
            if kind == "absl":
                run(module.main, argv=argv)
            else:
                from libs.run.errors import guarded
                guarded(module.main, os.path.basename(script))(list(args))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:  # a bug: report it like Python would
            import traceback
            err.write("Traceback (most recent call last):\n" + "".join(traceback.format_exception(e)))
            code = 1
    return {"code": code, "stderr": err.getvalue()}


def main():
    spec_path, results_path = Path(sys.argv[1]).resolve(), Path(sys.argv[2]).resolve()
    spec = json.loads(spec_path.read_text())
    os.chdir(ROOT)
    script = spec["script"]
    loader = importlib.util.spec_from_file_location("cli_under_test", ROOT / script)
    module = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(module)
    results = [run_case(module, spec.get("kind", "absl"), script, c["args"], c.get("fault")) for c in spec["cases"]]
    results_path.write_text(json.dumps(results))


if __name__ == "__main__":
    main()

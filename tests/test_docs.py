"""The README stays a door and the docs stay true.

* README.md has at most ``README_MAX_LINES`` lines.
* Every relative link in README.md and docs/*.md points to a file of the repository, and a
  ``#anchor`` into a Markdown file names one of its headings.
* README.md names every package of libs/ and every top-level script and folder.
* Every repository path named in their inline code exists.
* Every command in them (fenced ``bash`` blocks, and inline code that starts with ``python``,
  ``bash`` or ``accelerate``) names scripts, configs and ``--config.a.b`` fields that exist,
  flags that its script defines, and environment variables that the project reads.

``EXPECTED_AT_MERGE`` lists pages that other branches add; a link to one of them passes while
it is missing, and the test fails once it exists, so that the entry is removed at merge.
"""
import functools
import importlib
import itertools
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
EXPECTED_AT_MERGE = ()
#: environment variables read by other tools (accelerate, wandb, OpenMP), not by this project
FOREIGN_ENV = re.compile(r"(ACCELERATE_|WANDB_|OMP_|MKL_|CUDA_)\w*")

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`]+)`")  # inline code may wrap over lines
COMMAND_START = re.compile(r"^(?:[A-Z_][A-Z0-9_]*=\S*\s+)*(?:python3?|bash|accelerate)\s")


def doc_files():
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def doc_ids():
    return [str(p.relative_to(ROOT)) for p in doc_files()]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset:
    text = FENCE.sub("", path.read_text())
    return frozenset(slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+)$", text, re.M))


def links(path: Path):
    text = FENCE.sub("", path.read_text())
    for target in LINK.findall(text):
        if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            yield target


def test_readme_is_short():
    n = len((ROOT / "README.md").read_text().splitlines())
    assert n <= README_MAX_LINES, (f"README.md has {n} lines (at most {README_MAX_LINES}): move the detail "
                                   "into a docs/ page and link it")


@pytest.mark.parametrize("path", doc_files(), ids=doc_ids())
def test_relative_links_resolve(path):
    problems = []
    for target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        rel = dest.relative_to(ROOT).as_posix() if dest.is_relative_to(ROOT) else str(dest)
        if not dest.exists():
            if rel not in EXPECTED_AT_MERGE:
                problems.append(f"{target}: {rel} does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading '#{anchor}' in {rel}")
    assert not problems, f"{path.relative_to(ROOT)}: " + "; ".join(problems)


def test_expected_at_merge_pages_are_still_missing():
    arrived = [p for p in EXPECTED_AT_MERGE if (ROOT / p).exists()]
    assert not arrived, (f"{', '.join(arrived)} now exist: remove them from EXPECTED_AT_MERGE in "
                         "tests/test_docs.py so that their links are checked like any other")


def commands(path: Path):
    """Each command of a doc as one string (continuation lines joined, comments dropped)."""
    text = path.read_text()
    lines = []
    for lang, body in FENCE.findall(text):
        if lang in ("bash", "sh", ""):
            lines += [line.split(" #", 1)[0] for line in re.sub(r"\\\n", " ", body).splitlines()]
    lines += [" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text))]
    for line in lines:
        for part in re.split(r"&&|;|\|\|", line):  # a && b: each part on its own
            if COMMAND_START.match(part.strip() + " "):
                yield part.strip()


def expand(token: str):
    """scripts/{train,eval}_cifar.sh -> both paths."""
    m = re.search(r"\{([^{}]*,[^{}]*)\}", token)
    if not m:
        return [token]
    return list(itertools.chain.from_iterable(
        expand(token[:m.start()] + alt + token[m.end():]) for alt in m.group(1).split(",")))


def placeholder(token: str) -> bool:
    return bool(re.search(r"[<>*]|\.\.\.|^[A-Z_]+$", token))


def script_of(words):
    """The script a command runs (python X.py / bash X.sh / accelerate launch [flags] X.py)."""
    words = [w for w in words if not re.match(r"[A-Z_][A-Z0-9_]*=", w)]
    if not words or words[0] not in ("python", "python3", "bash", "accelerate") or len(words) < 2:
        return None, []
    rest = words[1:]
    if words[0] == "accelerate":
        rest = rest[1:]  # launch
        while rest and rest[0].startswith("-"):
            rest = rest[1:] if "=" in rest[0] or rest[0] in ("--multi_gpu",) else rest[2:]
    elif rest[0] == "-m":
        return None, []
    return (rest[0], rest[1:]) if rest else (None, [])


@functools.lru_cache(maxsize=None)
def config(name: str):
    return importlib.import_module(f"configs.{name}").get_config()


def has_field(cfg, dotted: str) -> bool:
    node = cfg
    for part in dotted.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError):
            return False
    return True


@functools.lru_cache(maxsize=None)
def defining_sources(script: str) -> str:
    """The text where a script's flags may be defined: the script, and libs/cli/ for the
    entry scripts that take their flags from there."""
    text = (ROOT / script).read_text()
    if "libs.cli" in text:
        text += "".join(p.read_text() for p in sorted((ROOT / "libs" / "cli").rglob("*.py")))
    return text


@functools.lru_cache(maxsize=None)
def project_text() -> str:
    files = itertools.chain((ROOT / "libs").rglob("*.py"), ROOT.glob("*.py"),
                            (ROOT / "scripts").glob("*"), (ROOT / "benchmarks").glob("*.sh"))
    return "".join(p.read_text() for p in files if p.is_file())


def command_problems(cmd: str):
    words = [w.strip("[]") for w in shlex.split(cmd)]
    problems = []
    for word in words:
        env = re.match(r"([A-Z_][A-Z0-9_]*)=", word)
        if env and not FOREIGN_ENV.fullmatch(env.group(1)) and \
                not re.search(rf"\b{env.group(1)}\b", project_text()):
            problems.append(f"environment variable {env.group(1)} is read nowhere")
    script, args = script_of(words)
    if script is None or placeholder(script):
        return problems
    for path in expand(script):
        if not (ROOT / path).is_file():
            problems.append(f"{path} does not exist")
    if problems:
        return problems
    config_name = None
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if "=" in arg else (args[i + 1] if i + 1 < len(args) else "")
        if arg.startswith("--config=") or (arg == "--config" and script.endswith(".py")):
            path = value if "/" in value or value.endswith(".py") else f"configs/{value}.py"
            if not (ROOT / path).is_file():
                problems.append(f"{path} does not exist")
            else:
                config_name = Path(path).stem
    for arg in args:
        if not arg.startswith("--"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name.startswith("config."):
            if config_name and not has_field(config(config_name), name[len("config."):]):
                problems.append(f"{arg.split('=')[0]}: configs/{config_name}.py has no such field")
        elif script.endswith(".py") and not re.search(rf"[\"']-?-?{name}[\"']", defining_sources(script)):
            problems.append(f"{script} defines no flag --{name}")
    return problems


@pytest.mark.parametrize("path", doc_files(), ids=doc_ids())
def test_commands_name_what_exists(path):
    found = list(commands(path))
    problems = [f"`{c}`: {p}" for c in found for p in command_problems(c)]
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


REPO_PATH = re.compile(r"^(?:libs|tests|configs|scripts|tools|benchmarks|pretrained|docs)/[\w./{},-]*$")


def defined(name: str) -> bool:
    """``libs/run/atomic.open_own``: a module's path with one of its top-level names."""
    module, _, attr = name.rpartition(".")
    source = ROOT / f"{module}.py"
    return bool(module and attr.isidentifier() and source.exists() and re.search(
        rf"^(?:def|class) {attr}\b|^{attr}\s*[:=]", source.read_text(), re.M))


@pytest.mark.parametrize("path", doc_files(), ids=doc_ids())
def test_named_files_exist(path):
    """A file or folder of the repository named in inline code (`libs/exits/recorder.py`)."""
    named = {t for t in INLINE.findall(FENCE.sub("", path.read_text())) if REPO_PATH.match(t)}
    missing = sorted(p for t in named for p in expand(t) if not (ROOT / p).exists() and not defined(p))
    assert not missing, f"{path.relative_to(ROOT)} names files that do not exist: {', '.join(missing)}"


def test_readme_maps_the_tree():
    """"Where things live" names every package of libs/, every top-level script and folder."""
    import fnmatch

    names = set(INLINE.findall(FENCE.sub("", (ROOT / "README.md").read_text())))
    wanted = [f"libs/{p.parent.name}/" for p in sorted((ROOT / "libs").glob("*/__init__.py"))]
    wanted += [f"{d}/" for d in ("configs", "scripts", "tools", "benchmarks", "pretrained", "docs")]
    missing = [w for w in wanted if w not in names]
    missing += [p.name for p in sorted(ROOT.glob("*.py"))
                if not any(fnmatch.fnmatch(p.name, n) for n in names)]
    assert not missing, f"README.md's 'Where things live' does not name: {', '.join(missing)}"


def test_commands_are_found():
    """The extraction above sees the commands: the quick start's two, at least."""
    found = list(commands(ROOT / "README.md"))
    assert any("scripts/main_job.sh" in c for c in found)
    assert any("pytest -q" in c for c in found)


def test_a_wrong_command_is_caught():
    assert command_problems("python train.py --config=configs/no_such.py") == ["configs/no_such.py does not exist"]
    assert command_problems("python eval.py --config=configs/digits_uvit_tiny.py --no_such_flag=1") == \
        ["eval.py defines no flag --no_such_flag"]
    assert command_problems("python eval.py --config=configs/digits_uvit_tiny.py --config.sample.nope=1") == \
        ["--config.sample.nope: configs/digits_uvit_tiny.py has no such field"]
    assert command_problems("NO_SUCH_VAR=1 bash scripts/{train,nope}_cifar.sh") == \
        ["environment variable NO_SUCH_VAR is read nowhere", "scripts/nope_cifar.sh does not exist"]

"""Compiled sampling: ``torch.compile`` of an ``ExitBackbone`` for the evaluation engine, the
training-time grids and the benchmarks (``config.sample.compile``).

``compile_network(net, mode)`` returns a *sampling view* of ``net``: a shallow copy that shares
every parameter and buffer with ``net`` (nothing of ``net`` itself is changed) and whose entry
points run compiled code. The view is an instance of ``net``'s class, so the engine, the exit
recorder and the exit loop use it as they use ``net``:

``none``    ``net`` itself, eager.
``blocks``  regional compilation. Each repeated module (the items of the backbone's
            ``ModuleList``s and the children of the same classes: U-ViT's blocks, DiT's blocks,
            the uncertainty heads) has its ``forward`` (heads: also ``mean_certainty``, the
            batched exit test's statistic) compiled with ``fullgraph=True`` as
            the class's function, so every block of a class shares its graphs (dynamo keeps
            graphs per code object; the module is an input, its parameters graph inputs); the
            backbone's ``embed`` and ``output_head`` hooks are compiled once each. The exit
            loop, its decisions and the batch compaction stay in Python, so every exit rule
            runs, at every batch size. Batch compaction changes the rows a block sees: with
            ``batch="dynamic"`` (default) dynamo compiles the full batch's shape first and,
            at the first other size, one graph with a dynamic batch dimension (plus one for a
            single row: sizes 0 and 1 are specialised), so at most three graphs per region
            and guard set; ``batch="bucket"`` pads the rows up to the next power of two
            instead (static graphs, log2(B) + 1 per region).
``graphs``  for calls whose exit block is known before the call (``Call.static_exit`` is
            not None: ``full``, ``static:K``, a ``profile:`` step), one whole-call graph
            (embedding, blocks 0..K, output head; ``fullgraph=True``) per distinct depth K and
            input shape, compiled lazily on first use and reused across calls and batches.
            Each depth is its own code object, so dynamo's per-function recompile limit
            applies per depth; the view caps the graphs at ``max_graphs`` (new shapes beyond
            it run the ``blocks`` path, noted once). Calls whose exits are decided per
            sample (``threshold:``, ``budget:``) run the ``blocks`` path, with a one-line note
            in the log per policy.

Compile time is measured apart from sampling: a call during which dynamo produced a graph
counts, whole, as compile time (it includes one run of the new graph, milliseconds against
seconds of compiling). ``view.compile_stats`` (``CompileStats``) holds the seconds, the graphs
and the notes; ``compile_seconds(net)`` reads them (0 for an eager network).

On a GPU, ``compile_mode="reduce-overhead"`` (inductor's CUDA graphs) suits ``graphs``: each
whole-call output is cloned out of the CUDA graph's memory, since the samplers keep earlier
model outputs across calls.
"""
from __future__ import annotations

import copy
import functools
import logging
import time
import types
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn as nn

MODES = ("none", "blocks", "graphs")
BATCH_MODES = ("dynamic", "bucket")
#: methods compiled besides ``forward`` on the repeated modules that define them: the
#: uncertainty heads' exit-test statistic of a batch (libs/models/uvit_core.py
#: ``UncertaintyHead``). A batch of one keeps its eager test (``mean_certainty_one``: its
#: three small ops and one host read cost less than entering a compiled graph, on the digits
#: model on one CPU thread).
HEAD_METHODS = ("mean_certainty",)

log = logging.getLogger(__name__)


class CompileModeError(ValueError):
    """An unknown compile mode (config.sample.compile)."""


def check_mode(mode) -> str:
    """``mode`` if it is one of ``MODES``, else ``CompileModeError`` naming the choices."""
    if mode not in MODES:
        raise CompileModeError(f"config.sample.compile={mode!r}: choose one of {', '.join(MODES)} (none = eager, "
                               f"blocks = compiled blocks for every exit rule, graphs = whole-call graphs for "
                               f"static schedules)")
    return mode


@dataclass
class CompileStats:
    """What compiling cost a view: ``seconds`` of calls that compiled, ``graphs`` dynamo
    produced in them, ``notes`` (fallbacks, caps) logged once each."""

    mode: str
    seconds: float = 0.0
    graphs: int = 0
    whole_call_graphs: int = 0
    notes: List[str] = field(default_factory=list)

    def note(self, text: str, logger=None) -> None:
        if text not in self.notes:
            self.notes.append(text)
            (logger or log).info("%s", text)


def compile_seconds(net) -> float:
    """Seconds ``net`` (a view of ``compile_network``) spent in calls that compiled; 0 if eager."""
    stats = getattr(net, "compile_stats", None)
    return stats.seconds if stats is not None else 0.0


class _Timed:
    """A compiled function whose calls that produced a graph count as compile time."""

    __slots__ = ("fn", "stats", "dynamo")

    def __init__(self, fn: Callable, stats: CompileStats):
        from torch._dynamo.utils import counters  # imported here: importing dynamo takes seconds

        self.fn, self.stats, self.dynamo = fn, stats, counters  # ["stats"]["unique_graphs"]: graphs made

    def __call__(self, *args, **kwargs):
        before = self.dynamo["stats"]["unique_graphs"]
        t0 = time.perf_counter()
        out = self.fn(*args, **kwargs)
        made = self.dynamo["stats"]["unique_graphs"] - before
        if made:
            self.stats.seconds += time.perf_counter() - t0
            self.stats.graphs += made
        return out


def _bucket(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _padded(fn: Callable) -> Callable:
    """``fn`` on its tensor arguments of ``b`` rows padded with zero rows to the next power of
    two (every op of a block and a head acts per row), its output cut back to ``b`` rows."""
    def call(module, rows, *args, **kwargs):
        b = rows.shape[0]
        n = _bucket(b)
        if n == b:
            return fn(module, rows, *args, **kwargs)

        def pad(a):
            if isinstance(a, torch.Tensor) and a.ndim and a.shape[0] == b:
                return torch.cat([a, a.new_zeros((n - b, *a.shape[1:]))])
            return a
        return fn(module, pad(rows), *map(pad, args), **{k: pad(v) for k, v in kwargs.items()})[:b]
    return call


class _Compiler:
    """The ``torch.compile`` settings of one view, and its stats."""

    def __init__(self, stats: CompileStats, backend, compile_mode, batch: str):
        self.stats, self.backend, self.compile_mode, self.batch = stats, backend, compile_mode, batch

    def __call__(self, fn: Callable, dynamic=None) -> _Timed:
        kw = {"mode": self.compile_mode} if self.compile_mode else {}
        return _Timed(torch.compile(fn, fullgraph=True, backend=self.backend, dynamic=dynamic, **kw), self.stats)

    def region(self, fn: Callable) -> Callable:
        """A repeated module's method: batch dynamic (dynamo's automatic dynamic) or bucketed."""
        if self.batch == "bucket":
            return _padded(self(fn, dynamic=False))
        return self(fn)


def _region_copy(module: nn.Module, compiler: _Compiler) -> nn.Module:
    """A shallow copy of ``module`` (same parameters) whose ``forward`` and head methods run the
    class's compiled function on ``module`` itself."""
    view = copy.copy(module)
    cls = type(module)
    view._compiled_call_impl = functools.partial(compiler.region(cls.forward), module)
    for name in HEAD_METHODS:
        if callable(getattr(cls, name, None)):
            view.__dict__[name] = functools.partial(compiler.region(getattr(cls, name)), module)
    return view


def _with_compiled_regions(net: nn.Module, compiler: _Compiler) -> nn.Module:
    """A shallow copy of ``net`` whose repeated modules are ``_region_copy``s."""
    lists = {name: m for name, m in net.named_children() if isinstance(m, nn.ModuleList)}
    classes = {type(item) for m in lists.values() for item in m}
    view = copy.copy(net)
    view._modules = dict(net._modules)
    for name, child in net.named_children():
        if name in lists:
            items = copy.copy(child)
            items._modules = {k: _region_copy(m, compiler) if type(m) in classes else m
                              for k, m in child._modules.items()}
            view._modules[name] = items
        elif type(child) in classes:
            view._modules[name] = _region_copy(child, compiler)
    cls = type(net)
    view.__dict__["embed"] = functools.partial(compiler(cls.embed), net)
    view.__dict__["output_head"] = functools.partial(compiler(cls.output_head), net)
    return view


def _depth_function(cls, last: int) -> Callable:
    """``net -> cls._forward_truncated(net, x, t, cond, last)`` as a function with its own code
    object (dynamo keeps graphs, and counts recompiles, per code object)."""
    def whole_call(net, x, timesteps, cond):
        return cls._forward_truncated(net, x, timesteps, cond, last)

    code = whole_call.__code__.replace(co_name=f"whole_call_depth{last}", co_qualname=f"whole_call_depth{last}")
    return types.FunctionType(code, whole_call.__globals__, code.co_name, None, whole_call.__closure__)


class _WholeCalls:
    """``view._forward_truncated`` of ``graphs``: a whole-call graph per depth and input key."""

    def __init__(self, net, view, compiler: _Compiler, max_graphs: int, logger):
        self.net, self.view, self.compiler, self.max_graphs, self.logger = net, view, compiler, max_graphs, logger
        self.per_depth = {}  # depth -> compiled whole call
        self.keys = set()  # (depth, shapes, modes) compiled so far
        self.cudagraphs = compiler.compile_mode in ("reduce-overhead", "max-autotune")
        self.limit = torch._dynamo.config.recompile_limit  # graphs dynamo keeps per code object

    def __call__(self, x, timesteps, cond, last: int):
        key = (last, tuple(x.shape), tuple(timesteps.shape), None if cond is None else tuple(cond.shape),
               torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
               torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
        if key not in self.keys:
            same_depth = sum(1 for k in self.keys if k[0] == last)
            if len(self.keys) >= self.max_graphs or same_depth >= self.limit:
                self.compiler.stats.note(f"compile graphs: cap of {self.max_graphs} whole-call graphs ({self.limit} "
                                         f"per depth) reached; new shapes run the compiled blocks", self.logger)
                return type(self.net)._forward_truncated(self.view, x, timesteps, cond, last)
            self.keys.add(key)
            self.compiler.stats.whole_call_graphs = len(self.keys)
        fn = self.per_depth.get(last)
        if fn is None:
            fn = self.per_depth[last] = self.compiler(_depth_function(type(self.net), last), dynamic=False)
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
            return fn(self.net, x, timesteps, cond).clone()
        return fn(self.net, x, timesteps, cond)


def _note_fallbacks(view, stats: CompileStats, logger) -> None:
    """``view.forward_early_exit`` noting, once per policy, calls that fall back to ``blocks``."""
    from libs.exits.policy import ExitPolicyError, as_call

    eager = type(view).forward_early_exit

    def forward_early_exit(x, timesteps, *args, exit_threshold=None, exit_policy=None, **kwargs):
        try:
            call = as_call(exit_policy if exit_policy is not None else exit_threshold)
        except ExitPolicyError:  # not runnable as given: the eager path says why
            call = None
        if call is not None and call.static_exit(view.num_blocks) is None:
            stats.note(f"compile graphs: {call.spec} decides exits per sample, so it runs the compiled blocks "
                       f"(whole-call graphs need the exit block before the call)", logger)
        return eager(view, x, timesteps, *args, exit_threshold=exit_threshold, exit_policy=exit_policy, **kwargs)

    view.__dict__["forward_early_exit"] = forward_early_exit


def compile_network(net: nn.Module, mode: str, backend="inductor", compile_mode: Optional[str] = None,
                    batch: str = "dynamic", max_graphs: int = 64, logger=None) -> nn.Module:
    """The sampling view of ``net`` for ``mode`` (module docstring); ``net`` for ``none`` (and a
    view of ``mode`` itself as it is).

    ``backend`` and ``compile_mode`` go to ``torch.compile`` (tests use ``backend="eager"`` to
    check graphs without inductor's compile time); ``batch`` is how ``blocks`` meets batch
    compaction (``dynamic`` | ``bucket``); ``max_graphs`` caps the whole-call graphs."""
    check_mode(mode)
    if batch not in BATCH_MODES:
        raise ValueError(f"batch={batch!r}: choose one of {', '.join(BATCH_MODES)}")
    if mode == "none":
        return net
    stats = getattr(net, "compile_stats", None)
    if stats is not None:  # already a view
        if stats.mode != mode:
            raise ValueError(f"this network is already compiled for {stats.mode!r}; compile the network itself")
        return net
    stats = CompileStats(mode)
    compiler = _Compiler(stats, backend, compile_mode if mode == "graphs" else None, batch)
    view = _with_compiled_regions(net, _Compiler(stats, backend, None, batch))
    if mode == "graphs":
        view.__dict__["_forward_truncated"] = _WholeCalls(net, view, compiler, max_graphs, logger)
        _note_fallbacks(view, stats, logger)
    view.__dict__["compile_stats"] = stats
    return view

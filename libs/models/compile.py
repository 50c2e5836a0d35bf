"""Compiled sampling (``config.sample.compile``): ``compile_network(net, mode)`` returns a
*sampling view* of ``net``, a copy of its module tree sharing every parameter and buffer (so
training, which stays eager, updates the view's weights), compiled through public calls only.

``none``    ``net`` itself, eager.
``blocks``  regional compilation (as diffusers' ``compile_repeated_blocks``): each repeated
            module (blocks, uncertainty heads) via ``nn.Module.compile(fullgraph=True)``, the
            heads' ``mean_certainty`` and the backbone's ``embed`` / ``output_head`` via
            ``torch.compile``. The exit loop stays in Python, so every rule runs at any batch
            size; compaction gives at most three graphs per region (full batch, dynamic, one row).
``graphs``  for calls whose exit block is known before the call (``full``, ``static:K``,
            ``profile:``), one whole-call graph (``_forward_truncated``, static shapes) per
            depth and input shape, at most ``max_graphs``; per-sample rules and shapes past the
            cap run the ``blocks`` path, noted once in the log.

A call during which dynamo produced a graph counts, whole, as compile time
(``view.compile_stats``, ``compile_seconds(net)``). On a GPU, ``compile_mode="reduce-overhead"``
suits ``graphs``; each whole-call output is then cloned out of the CUDA graph's memory, since
samplers keep earlier outputs.
"""
from __future__ import annotations

import copy
import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import torch
import torch.nn as nn

MODES = ("none", "blocks", "graphs")
#: compiled besides ``forward`` on repeated modules; a batch of one keeps ``mean_certainty_one`` eager (cheaper)
HEAD_METHODS = ("mean_certainty",)
#: the backbone methods that reach compiled code; their calls that made graphs are compile time
TIMED = ("embed", "run_block", "output_head", "mean_certainty", "mean_certainty_one")

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
    """A callable whose calls that produced a graph count as compile time."""

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


def _shared_copy(net: nn.Module) -> nn.Module:
    """A copy of ``net``'s module tree (new module objects) holding ``net``'s own parameters and
    buffers."""
    tensors = itertools.chain(net.parameters(), net.buffers())
    return copy.deepcopy(net, memo={id(t): t for t in tensors})


def _repeated_modules(net: nn.Module) -> List[nn.Module]:
    """The items of ``net``'s ``ModuleList`` children, and the children of the same classes."""
    items = [m for child in net.children() if isinstance(child, nn.ModuleList) for m in child]
    classes = {type(m) for m in items}
    return items + [m for m in net.children() if type(m) in classes]


def _compile_regions(view: nn.Module, stats: CompileStats, backend) -> None:
    """``blocks`` on ``view`` (module docstring)."""
    kw = dict(fullgraph=True, backend=backend)
    for module in _repeated_modules(view):
        module.compile(**kw)
        for name in HEAD_METHODS:
            if callable(getattr(module, name, None)):
                setattr(module, name, torch.compile(getattr(module, name), **kw))
    for name in ("embed", "output_head"):
        setattr(view, name, torch.compile(getattr(view, name), **kw))
    for name in TIMED:
        setattr(view, name, _Timed(getattr(view, name), stats))


class _WholeCalls:
    """``view._forward_truncated`` of ``graphs``: ``net``'s compiled once, a graph per depth and
    input key, at most ``max_graphs``; beyond, the view's own (compiled blocks)."""

    def __init__(self, net, view, stats: CompileStats, backend, compile_mode, max_graphs: int, logger):
        self.net, self.stats, self.max_graphs, self.logger = net, stats, max_graphs, logger
        self.blocks_path = view._forward_truncated
        kw = {"mode": compile_mode} if compile_mode else {}
        self.fn = _Timed(torch.compile(type(net)._forward_truncated, fullgraph=True, dynamic=False,
                                       backend=backend, **kw), stats)
        self.keys = set()  # (depth, shapes, modes) compiled so far
        self.cudagraphs = compile_mode in ("reduce-overhead", "max-autotune")

    def __call__(self, x, timesteps, cond, last: int):
        key = (last, tuple(x.shape), tuple(timesteps.shape), None if cond is None else tuple(cond.shape),
               torch.is_grad_enabled(), torch.is_inference_mode_enabled(),
               torch.is_autocast_enabled(x.device.type), torch.get_autocast_dtype(x.device.type))
        if key not in self.keys:
            if len(self.keys) >= self.max_graphs:
                self.stats.note(f"compile graphs: cap of {self.max_graphs} whole-call graphs reached; new shapes "
                                f"run the compiled blocks", self.logger)
                return self.blocks_path(x, timesteps, cond, last)
            self.keys.add(key)
            self.stats.whole_call_graphs = len(self.keys)
            # Each key is one more specialisation of the one function: let dynamo keep them all.
            with torch._dynamo.config.patch(recompile_limit=max(self.max_graphs, 8)):
                return self._run(x, timesteps, cond, last)
        return self._run(x, timesteps, cond, last)

    def _run(self, x, timesteps, cond, last: int):
        if self.cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
            return self.fn(self.net, x, timesteps, cond, last).clone()
        return self.fn(self.net, x, timesteps, cond, last)


def _per_sample_rule(rule, num_blocks: int) -> Optional[str]:
    """The spelling of ``rule`` (an exit rule or a threshold, as the forwards take it) when it
    decides exits per sample, so that no whole-call graph can serve its calls; else None. The
    one function here that reads an exit rule."""
    from libs.exits.policy import ExitPolicyError, as_call

    try:
        call = as_call(rule)
    except ExitPolicyError:  # not runnable as given: the eager path says why
        return None
    return call.spec if call.static_exit(num_blocks) is None else None


def _note_fallbacks(view, stats: CompileStats, logger) -> None:
    """``view.forward_early_exit`` noting, once per rule, calls that run the ``blocks`` path."""
    from libs.exits.call import Call

    eager, seen = view.forward_early_exit, set()  # the Calls read so far (a sampling run passes Calls)

    def forward_early_exit(x, timesteps, *args, exit_threshold=None, exit_policy=None, **kwargs):
        rule = exit_policy if exit_policy is not None else exit_threshold
        if not (isinstance(rule, Call) and rule in seen):  # other rules: their spelling hides their calibration
            spec = _per_sample_rule(rule, view.num_blocks)
            if spec is not None:
                stats.note(f"compile graphs: {spec} decides exits per sample, so it runs the compiled blocks "
                           f"(whole-call graphs need the exit block before the call)", logger)
            if isinstance(rule, Call):
                seen.add(rule)
        return eager(x, timesteps, *args, exit_threshold=exit_threshold, exit_policy=exit_policy, **kwargs)

    view.forward_early_exit = forward_early_exit


def compile_network(net: nn.Module, mode: str, backend="inductor", compile_mode: Optional[str] = None,
                    max_graphs: int = 64, logger=None) -> nn.Module:
    """The sampling view of ``net`` for ``mode`` (module docstring); ``net`` for ``none`` (and a
    view of ``mode`` itself as it is).

    ``backend`` and ``compile_mode`` go to ``torch.compile`` (tests use ``backend="eager"`` to
    check graphs without inductor's compile time; ``compile_mode`` is for ``graphs``'
    whole calls); ``max_graphs`` caps the whole-call graphs."""
    check_mode(mode)
    if mode == "none":
        return net
    stats = getattr(net, "compile_stats", None)
    if stats is not None:  # already a view
        if stats.mode != mode:
            raise ValueError(f"this network is already compiled for {stats.mode!r}; compile the network itself")
        return net
    stats = CompileStats(mode)
    view = _shared_copy(net)
    _compile_regions(view, stats, backend)
    if mode == "graphs":
        view._forward_truncated = _WholeCalls(net, view, stats, backend, compile_mode, max_graphs, logger)
        _note_fallbacks(view, stats, logger)
    view.compile_stats = stats
    return view

"""diffusers' own caches on an adapted transformer, spelled like the exit rules of a sweep, and
the count of the work they actually do.

    fbc:T           ``apply_first_block_cache(FirstBlockCacheConfig(threshold=T))``: block 0 runs;
                    when its residual changed by less than T (relative mean absolute change over
                    the batch) the other blocks are skipped and their cached residual added
    taylorseer:N    ``apply_taylorseer_cache(TaylorSeerCacheConfig(cache_interval=N,
                    disable_cache_before_step=3, max_order=1))`` on every block's attention and
                    feed-forward (explicit ``cache_identifiers``: the default patterns match no
                    module of DiT or PixArt): after 3 full calls, one call in N computes them, the
                    others predict them by a first-order Taylor expansion

Both work on ``DiTTransformer2DModel`` and ``PixArtTransformer2DModel``; the other diffusers
caches (which need calibration or a pipeline's timestep callback) are refused in one line.
The cache context is set per call as diffusers' pipelines set it (``CacheContext('cond')``)
and the hooks' state is reset before each sampling run.

``WorkCounter``: forward hooks on modules that run only when the work is done (``to_q``,
``attn2.to_q``, the feed-forward's last Linear, ``norm1``) count the rows through each piece;
GFLOPs/img = rows x the piece's per-image FLOPs (``libs/models/flops.py``) + embedding and
final layer per call."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict

import torch

from libs.run.errors import UserError

SPELLINGS = ("fbc:T", "taylorseer:N")
SUPPORTED = {"DiTTransformer2DModel": ("fbc", "taylorseer"), "PixArtTransformer2DModel": ("fbc", "taylorseer")}
KNOWN_ELSEWHERE = ("magcache", "fastercache", "pab", "seacache", "layerskip", "textkv")
TAYLOR_MODULES = r"transformer_blocks\.\d+\.(attn1|attn2|ff)"


@dataclass(frozen=True)
class CacheRule:
    """One diffusers cache at one setting."""

    family: str  # 'fbc' | 'taylorseer'
    value: float

    @property
    def spec(self) -> str:
        return f"{self.family}:{self.value:g}"

    def config(self):
        from diffusers.hooks import FirstBlockCacheConfig, TaylorSeerCacheConfig

        if self.family == "fbc":
            return FirstBlockCacheConfig(threshold=float(self.value))
        return TaylorSeerCacheConfig(cache_interval=int(self.value), disable_cache_before_step=3, max_order=1,
                                     taylor_factors_dtype=torch.float32, cache_identifiers=[TAYLOR_MODULES])


def is_cache_spec(item: str) -> bool:
    return item.split(":", 1)[0].strip().lower() in {"fbc", "taylorseer", *KNOWN_ELSEWHERE}


def parse_cache(item: str, model_class: str) -> CacheRule:
    """'fbc:0.1' / 'taylorseer:3' -> CacheRule; anything else is refused in one line."""
    name, _, arg = item.strip().partition(":")
    name = name.lower()
    works = SUPPORTED.get(model_class, ())
    if name not in works:
        raise UserError(f"diffusers cache {item!r} is not run on {model_class} here; supported: "
                        f"{', '.join(SPELLINGS)} on {', '.join(SUPPORTED)}")
    try:
        value = float(arg)
    except ValueError:
        value = float("nan")
    ok = value > 0 if name == "fbc" else value >= 1 and value == int(value)
    if not ok:
        raise UserError(f"diffusers cache {item!r}: spell it fbc:T with T > 0 (relative change threshold) or "
                        f"taylorseer:N with an integer N >= 1 (one full call in N)")
    return CacheRule(name, value)


class applied:
    """``with applied(transformer, rule):`` the cache's hooks on, removed on exit."""

    def __init__(self, transformer, rule: CacheRule):
        self.transformer, self.rule = transformer, rule

    def __enter__(self):
        from diffusers.hooks import apply_first_block_cache, apply_taylorseer_cache

        from diffusers.hooks import HookRegistry

        apply = apply_first_block_cache if self.rule.family == "fbc" else apply_taylorseer_cache
        apply(self.transformer, self.rule.config())
        # the root's cached list of hooked submodules predates these hooks: the context must reach them
        HookRegistry.check_if_exists_or_initialize(self.transformer).invalidate_child_registries_cache()
        return self

    def __exit__(self, *exc):
        from diffusers.hooks import HookRegistry
        from diffusers.hooks.first_block_cache import _FBC_BLOCK_HOOK, _FBC_LEADER_BLOCK_HOOK
        from diffusers.hooks.taylorseer_cache import _TAYLORSEER_CACHE_HOOK

        registry = HookRegistry.check_if_exists_or_initialize(self.transformer)
        for name in (_FBC_LEADER_BLOCK_HOOK, _FBC_BLOCK_HOOK, _TAYLORSEER_CACHE_HOOK):
            registry.remove_hook(name, recurse=True)
        registry.invalidate_child_registries_cache()
        return False


def reset(transformer) -> None:
    """Forget every hook's state: a new sampling run."""
    from diffusers.hooks import HookRegistry

    HookRegistry.check_if_exists_or_initialize(transformer).reset_stateful_hooks(recurse=True)


def cached_call(transformer, cond_name: str):
    """``fn(x, t, cond) -> sample``: the transformer's own forward in the 'cond' cache context."""
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    def fn(x, t, cond):
        if cond_name == "y":
            kwargs = {"class_labels": cond}
        elif isinstance(cond, torch.Tensor) or cond is None:
            kwargs = {"encoder_hidden_states": cond}
        else:  # a PixArtCondition
            kwargs = dict(encoder_hidden_states=cond.context, encoder_attention_mask=cond.encoder_attention_mask,
                          added_cond_kwargs=cond.added_cond_kwargs)
        _set_cache_context(transformer, CacheContext("cond"))
        try:
            return transformer(x, timestep=t, return_dict=False, **kwargs)[0]
        finally:
            _set_cache_context(transformer, None)

    return fn


class WorkCounter:
    """Rows through each block piece while installed (module docstring)."""

    PIECES = {"attn": r"attn1\.to_q", "cross": r"attn2\.to_q", "mlp": r"ff\.net\.2", "rest": r"norm1"}

    def __init__(self, transformer):
        self.rows: Dict[str, int] = {k: 0 for k in self.PIECES}
        self.calls_rows = 0
        self._handles = []
        for name, module in transformer.named_modules():
            m = re.fullmatch(r"transformer_blocks\.\d+\.(.+)", name)
            for piece, pattern in self.PIECES.items():
                if m and re.fullmatch(pattern, m.group(1)):
                    self._handles.append(module.register_forward_pre_hook(self._counter(piece)))
        self._handles.append(transformer.register_forward_pre_hook(self._call, with_kwargs=True))

    def _counter(self, piece):
        def hook(module, args):
            self.rows[piece] += int(args[0].shape[0])
        return hook

    def _call(self, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        self.calls_rows += int(x.shape[0])

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def gflops_per_image(self, pieces: Dict[str, float], embed: float, head: float, num_images: int) -> float:
        total = self.calls_rows * (embed + head) + sum(self.rows[k] * pieces.get(k, 0.0) for k in self.rows)
        return total / max(num_images, 1) / 1e9

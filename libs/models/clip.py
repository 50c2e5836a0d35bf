"""Frozen CLIP ViT-L/14 text encoder (U-ViT's MS-COCO setting), through transformers::

    clip = FrozenCLIPEmbedder("openai/clip-vit-large-patch14", device="cuda")
    context = clip.encode(["a cat", "a dog"])     # (2, 77, 768): the full last_hidden_state

Tokens are padded to ``max_length`` (77) with end-of-text and truncated. Nothing downloads
(``local_files_only=True`` unless passed False); a missing model raises ``ClipNotFoundError``."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from libs.data.paths import REPO_ROOT

DEFAULT_CLIP = "openai/clip-vit-large-patch14"

__all__ = ["DEFAULT_CLIP", "ClipNotFoundError", "FrozenCLIPEmbedder", "resolve_clip_folder"]

_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                 "pytorch_model.bin.index.json")


class ClipNotFoundError(FileNotFoundError):
    """The CLIP text encoder (weights or tokenizer files) is not available locally."""


def _howto(version: str) -> str:
    name = version.rstrip("/").split("/")[-1]
    repo = version if "/" in version and not Path(version).is_absolute() else DEFAULT_CLIP
    return (f"To make it available offline, download it yourself (this project never downloads), e.g.\n"
            f"  hf download {repo} --include \"*.json\" \"*.txt\" \"model.safetensors\" --local-dir assets/{name}\n"
            f"(older huggingface_hub: huggingface-cli download ... with the same arguments), then pass "
            f"--clip assets/{name} (a name such as {repo!r} also finds assets/{name} by itself), "
            f"or fill the Hugging Face cache with the same command without --local-dir.")


def _folder_problems(folder: Path) -> list[str]:
    problems = []
    if not (folder / "config.json").is_file():
        problems.append("config.json")
    if not any((folder / f).is_file() for f in _WEIGHT_FILES):
        problems.append(" or ".join(_WEIGHT_FILES[::2]))
    if not ((folder / "tokenizer.json").is_file() or
            ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())):
        problems.append("tokenizer.json or vocab.json + merges.txt")
    return problems


def resolve_clip_folder(version: Union[str, os.PathLike]) -> Path:
    """The local folder of ``version``: the path itself (working directory, then repo root),
    ``assets/<basename>``, then the Hugging Face cache; else ``ClipNotFoundError``."""
    version = str(version)
    p = Path(version).expanduser()
    candidates = [p] if p.is_absolute() else [Path.cwd() / p, REPO_ROOT / p]
    candidates.append(REPO_ROOT / "assets" / p.name)
    looked = []
    for c in candidates:
        if c.is_dir():
            problems = _folder_problems(c)
            if not problems:
                return c
            looked.append(f"{c} (lacks {', '.join(problems)})")
        else:
            looked.append(f"{c} (no such folder)")
    if not p.is_absolute() and version.count("/") <= 1:  # could be a hub repo id
        try:
            from huggingface_hub import snapshot_download
            cached = Path(snapshot_download(version, local_files_only=True))
            problems = _folder_problems(cached)
            if not problems:
                return cached
            looked.append(f"Hugging Face cache {cached} (lacks {', '.join(problems)})")
        except Exception as e:  # not cached, invalid repo id, ...
            looked.append(f"Hugging Face cache for {version!r} ({type(e).__name__})")
    listing = "\n".join(f"  {x}" for x in looked)
    raise ClipNotFoundError(f"CLIP text encoder {version!r} not found locally.\nLooked at:\n{listing}\n{_howto(version)}")


class FrozenCLIPEmbedder(nn.Module):
    """CLIP text transformer, frozen, eval mode; ``encode(texts)`` -> (B, max_length, hidden).
    Given ``tokenizer`` and ``transformer``, ``version`` is not read."""

    def __init__(self, version: Union[str, os.PathLike] = DEFAULT_CLIP, device: Union[None, str, torch.device] = None,
                 max_length: int = 77, *, tokenizer=None, transformer: Optional[nn.Module] = None,
                 local_files_only: bool = True):
        super().__init__()
        if tokenizer is None or transformer is None:
            from transformers import CLIPTextModel, CLIPTokenizer

            try:
                source = resolve_clip_folder(version)
            except ClipNotFoundError:
                if local_files_only:
                    raise
                source = version  # explicitly allowed by the caller: transformers may download
            if transformer is None:
                transformer = CLIPTextModel.from_pretrained(str(source), local_files_only=local_files_only)
            if tokenizer is None:
                tokenizer = CLIPTokenizer.from_pretrained(str(source), local_files_only=local_files_only)
            # transformers 5 builds an empty tokenizer (3 special tokens) when the files are
            # missing instead of failing: refuse it.
            if len(tokenizer) <= 3:
                raise ClipNotFoundError(f"the tokenizer of CLIP {version!r} ({source}) has no vocabulary: its "
                                        f"tokenizer.json / vocab.json + merges.txt are missing.\n{_howto(str(version))}")
        self.version = str(version)
        self.tokenizer = tokenizer
        self.transformer = transformer
        self.max_length = max_length
        vocab_size = getattr(getattr(transformer, "config", None), "vocab_size", None)
        if vocab_size is not None and len(tokenizer) > vocab_size:
            raise ValueError(f"CLIP tokenizer has {len(tokenizer)} tokens but the text model only {vocab_size}: "
                             f"they do not belong together")
        self.requires_grad_(False)
        self.eval()
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.to(device)

    @property
    def device(self) -> torch.device:
        return next(self.transformer.parameters()).device

    @property
    def hidden_size(self) -> int:
        return self.transformer.config.hidden_size

    def train(self, mode: bool = True):
        """Stays in eval mode whatever the parent module does."""
        return super().train(False)

    def tokenize(self, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """Token ids (B, max_length), padded with end-of-text and truncated."""
        texts = [text] if isinstance(text, str) else list(text)
        batch = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding="max_length",
                               return_tensors="pt")
        return batch["input_ids"]

    @torch.no_grad()
    def encode(self, text: Union[str, Sequence[str]]) -> torch.Tensor:
        """Texts -> last_hidden_state (B, max_length, hidden) (hidden 768 for ViT-L/14)."""
        tokens = self.tokenize(text).to(self.device)
        return self.transformer(input_ids=tokens).last_hidden_state

    def forward(self, text: Union[str, Sequence[str]]) -> torch.Tensor:
        return self.encode(text)

"""Prompt conditions of a PixArt model without its data set: ``encode_prompt_file`` writes
``context`` (P + 1, S, C) and ``mask`` (P + 1, S) of the file's P prompts and, last, the empty
(null) prompt; prompt i is then label i, and ``PromptTable`` turns labels into
``PixArtCondition``s."""
from __future__ import annotations

from pathlib import Path

import torch

from libs.diffusers_exit.adapter import PixArtCondition
from libs.run.errors import UserError


@torch.no_grad()
def encode_prompt_file(pipeline, prompt_file, out, max_sequence_length: int = 120) -> Path:
    """Encode the prompts of ``prompt_file`` (and the empty prompt) with ``pipeline.encode_prompt``."""
    from safetensors.torch import save_file

    prompts = [line.strip() for line in Path(prompt_file).read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"prompt file {prompt_file} has no prompt: write one prompt per line")
    context, mask, _, _ = pipeline.encode_prompt(prompts + [""], do_classifier_free_guidance=False,
                                                 max_sequence_length=max_sequence_length)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({"context": context.float().cpu().contiguous(), "mask": mask.long().cpu().contiguous()}, str(out),
              metadata={"prompts": str(len(prompts))})
    return out


class PromptTable:
    """Labels (B,) -> ``PixArtCondition`` of those prompts (the last label: the empty prompt)."""

    def __init__(self, path, dtype=torch.float32):
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise UserError(f"prompt contexts {path} do not exist: make them with "
                            f"libs.diffusers_exit.prompts.encode_prompt_file(pipeline, prompts.txt, {path})")
        t = load_file(str(path))
        self.context, self.mask = t["context"].to(dtype), t["mask"]

    def __call__(self, labels: torch.Tensor) -> PixArtCondition:
        rows = labels.long().cpu()
        return PixArtCondition(self.context[rows].to(labels.device), self.mask[rows].to(labels.device))

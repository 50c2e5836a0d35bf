"""A test-only, deliberately plain forward of the released DiT on raw state-dict tensors, written
from the published facts (facebookresearch/DiT, models.py) and sharing no code with libs/:
the released parameter names, conv patch embedding, fixed 2-D sin-cos positions (numpy,
float64), 256-d cos-first time frequencies, Linear-SiLU-Linear time MLP, label table,
adaLN-Zero blocks (LayerNorm without affine, eps 1e-6; qkv with bias; tanh GELU) and the
adaLN final layer, c = t_emb + y_emb."""
import math

import numpy as np
import torch
import torch.nn.functional as F


def official_keys(depth):
    """The released state dict's key names, in no particular order."""
    keys = ["pos_embed", "x_embedder.proj.weight", "x_embedder.proj.bias", "t_embedder.mlp.0.weight",
            "t_embedder.mlp.0.bias", "t_embedder.mlp.2.weight", "t_embedder.mlp.2.bias",
            "y_embedder.embedding_table.weight", "final_layer.linear.weight", "final_layer.linear.bias",
            "final_layer.adaLN_modulation.1.weight", "final_layer.adaLN_modulation.1.bias"]
    for i in range(depth):
        for part in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"):
            keys += [f"blocks.{i}.{part}.weight", f"blocks.{i}.{part}.bias"]
    return keys


def official_pos_embed(dim, grid):
    """MAE's 2-D sin-cos table as DiT builds it: meshgrid(w, h), first half from the w grid."""
    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    g = np.stack(np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32)), axis=0)
    g = g.reshape(2, 1, grid, grid)
    return torch.from_numpy(np.concatenate([one_d(dim // 2, g[0]), one_d(dim // 2, g[1])], axis=1)).float()


def _ln(x):
    return F.layer_norm(x, x.shape[-1:], eps=1e-6)


def _mod(x, shift, scale):
    return x * (1 + scale[:, None]) + shift[:, None]


def official_forward(sd, x, t, y, depth, num_heads, patch, out_channels):
    """The released DiT forward (eval mode: no label dropout) on state dict ``sd``."""
    B = x.shape[0]
    tok = F.conv2d(x, sd["x_embedder.proj.weight"], sd["x_embedder.proj.bias"], stride=patch)
    tok = tok.flatten(2).transpose(1, 2) + sd["pos_embed"]
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    temb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(sd["t_embedder.mlp.0.weight"].dtype)
    temb = F.linear(F.silu(F.linear(temb, sd["t_embedder.mlp.0.weight"], sd["t_embedder.mlp.0.bias"])),
                    sd["t_embedder.mlp.2.weight"], sd["t_embedder.mlp.2.bias"])
    c = temb + sd["y_embedder.embedding_table.weight"][y]
    D = tok.shape[-1]
    hd = D // num_heads
    for i in range(depth):
        p = f"blocks.{i}."
        mods = F.linear(F.silu(c), sd[p + "adaLN_modulation.1.weight"], sd[p + "adaLN_modulation.1.bias"])
        s1, a1, g1, s2, a2, g2 = mods.chunk(6, dim=1)
        h = _mod(_ln(tok), s1, a1)
        qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"]).reshape(B, -1, 3, num_heads, hd)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(hd), dim=-1) @ v
        att = F.linear(att.transpose(1, 2).reshape(B, -1, D), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        tok = tok + g1[:, None] * att
        h = _mod(_ln(tok), s2, a2)
        h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]), approximate="tanh")
        tok = tok + g2[:, None] * F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    shift, scale = F.linear(F.silu(c), sd["final_layer.adaLN_modulation.1.weight"],
                            sd["final_layer.adaLN_modulation.1.bias"]).chunk(2, dim=1)
    out = F.linear(_mod(_ln(tok), shift, scale), sd["final_layer.linear.weight"], sd["final_layer.linear.bias"])
    g = int(round(out.shape[1] ** 0.5))
    out = out.reshape(B, g, g, patch, patch, out_channels)
    return torch.einsum("nhwpqc->nchpwq", out).reshape(B, out_channels, g * patch, g * patch)

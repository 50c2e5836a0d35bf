"""Contracts of libs/models/clip.py with a tiny CLIP text model and a byte-level tokenizer built
offline (CPU, no downloads)."""

import pytest
import torch

from libs.models.clip import ClipNotFoundError, FrozenCLIPEmbedder, resolve_clip_folder


def byte_level_vocab():
    """CLIP's byte-to-unicode alphabet, each symbol also with the end-of-word suffix, plus the
    two special tokens: with no merges every word is spelled byte by byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    extra = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    chars = [chr(c) for c in cs]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return vocab


def tiny_clip(hidden=32, seed=0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = byte_level_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(seed)
    return tokenizer, CLIPTextModel(config).eval()


def save_tiny_clip(folder, hidden=32):
    tokenizer, model = tiny_clip(hidden)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


def test_encode_shapes_padding_and_truncation():
    tokenizer, model = tiny_clip()
    clip = FrozenCLIPEmbedder(tokenizer=tokenizer, transformer=model, device="cpu")
    texts = ["a cat", "a photo of a dog on a mat"]
    out = clip.encode(texts)
    assert out.shape == (2, 77, 32) and out.dtype == torch.float32
    ids = tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(out, model(input_ids=ids).last_hidden_state)
    tokens = clip.tokenize("a")
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokens.shape == (1, 77)
    assert tokens[0, 0] == tokenizer.convert_tokens_to_ids("<|startoftext|>")
    assert (tokens[0, 2:] == eot).all()  # end of text, then padding with end of text
    long = clip.encode("x" * 500)  # truncated to 77 tokens
    assert long.shape == (1, 77, 32)
    assert torch.equal(clip(texts), out)


def test_frozen_and_eval():
    tokenizer, model = tiny_clip()
    clip = FrozenCLIPEmbedder(tokenizer=tokenizer, transformer=model, device="cpu")
    torch.nn.Sequential(clip).train()
    assert not clip.training and not clip.transformer.training
    assert not any(p.requires_grad for p in clip.parameters())
    assert clip.encode(["a"]).grad_fn is None
    assert clip.hidden_size == 32 and clip.device == torch.device("cpu")


def test_loads_a_local_folder_offline(tmp_path):
    folder = save_tiny_clip(tmp_path / "tiny-clip")
    tokenizer, model = tiny_clip()
    ref = FrozenCLIPEmbedder(tokenizer=tokenizer, transformer=model, device="cpu")
    clip = FrozenCLIPEmbedder(str(folder), device="cpu")
    assert resolve_clip_folder(folder) == folder
    texts = ["a red bus", ""]
    torch.testing.assert_close(clip.encode(texts), ref.encode(texts))


def test_missing_weights_error_says_how_to_get_them(tmp_path):
    with pytest.raises(ClipNotFoundError) as e:
        FrozenCLIPEmbedder(str(tmp_path / "no-such-clip"), device="cpu")
    assert "no-such-clip" in str(e.value) and "download" in str(e.value)
    # A hub name that is neither a local folder nor in the cache: offline, never downloaded.
    with pytest.raises(ClipNotFoundError) as e:
        FrozenCLIPEmbedder("adadiff-test-org/clip-that-does-not-exist", device="cpu")
    msg = str(e.value)
    assert "hf download adadiff-test-org/clip-that-does-not-exist" in msg
    assert "--local-dir assets/clip-that-does-not-exist" in msg
    # Weights without tokenizer files (transformers alone would build an empty tokenizer).
    _, model = tiny_clip()
    model.save_pretrained(tmp_path / "weights-only")
    with pytest.raises(ClipNotFoundError, match="tokenizer.json or vocab.json"):
        FrozenCLIPEmbedder(str(tmp_path / "weights-only"), device="cpu")

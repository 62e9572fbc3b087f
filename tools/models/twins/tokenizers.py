"""Tokenizers made offline (no hub): CLIP's byte-level BPE and a Qwen2-style byte-level BPE with a ChatML
template. Every twin's tokenizer comes from here."""

from __future__ import annotations


def clip_tokenizer(max_length: int = 77):
    """A CLIP BPE tokenizer whose vocabulary is made here: byte-level symbols, no merges."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {s: i for i, s in enumerate(symbols)}
    for s in symbols:
        vocab[s + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def _byte_symbols() -> list[str]:
    """GPT-2/CLIP's printable stand-in for each of the 256 bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


# A ChatML template like Qwen's: the image placeholder first, then the text, then the assistant turn.
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
VLM_ANSWER_WORDS = ("yes", "Yes", "no", "No")


def vlm_tokenizer():
    """A byte-level BPE tokenizer (Qwen2 style) made here: 256 byte symbols, merges that make each of
    yes/Yes/no/No one token, and the ChatML and image special tokens the processor needs."""
    from transformers import Qwen2Tokenizer

    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    merges = []
    for word in VLM_ANSWER_WORDS:
        piece = word[0]
        for ch in word[1:]:
            merges.append((piece, ch))
            piece += ch
            vocab.setdefault(piece, len(vocab))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>"]
    for token in specials:
        vocab[token] = len(vocab)
    return Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=specials[1:])

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


def t5_tokenizer(max_length: int = 512):
    """A T5 tokenizer (FLUX's tokenizer_2) whose vocabulary is made here: a SentencePiece-style unigram model
    over single characters (every printable ASCII and Latin-1 one, each also as a word start "▁c"), with T5's
    ids for <pad> 0, </s> 1 and <unk> 2. Any prompt tokenizes: a character outside the vocabulary becomes
    <unk>, as with T5's own model (no byte fallback, which T5Tokenizer would drop when it reloads)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import Unigram
    from transformers import T5Tokenizer  # T5TokenizerFast, FluxPipeline's tokenizer_2, is this class

    chars = [chr(c) for c in (*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("ÿ") + 1))]
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    model = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    # T5Tokenizer's own pre-tokenizer and decoder: words split on whitespace, each marked with "▁"
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        ]
    )
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    # extra_ids=0: no <extra_id_N> sentinels, which only T5's span-corruption pretraining reads
    return T5Tokenizer(tokenizer_object=model, extra_ids=0, model_max_length=max_length)


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


# Qwen2.5-VL-Instruct's own chat template (its chat_template.json), written out: a default system turn, and
# each image part becomes <|vision_start|><|image_pad|><|vision_end|> (the processor expands the pad).
QWEN_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Qwen's special tokens, in the order of their ids in the real vocabulary (151643 on)
QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)


def qwen_vl_tokenizer():
    """Qwen2.5-VL's tokenizer made here: a Qwen2 byte-level BPE (Qwen's pre-tokenizer regex) over the 256 byte
    symbols, with merges that make yes/Yes/no/No one token each, bare and after a space (Ġyes, ĠYes, ...) as
    in Qwen's real vocabulary, Qwen's special tokens, and Qwen2.5-VL's chat template."""
    from transformers import Qwen2Tokenizer

    vocab = {s: i for i, s in enumerate(_byte_symbols())}
    merges = []
    for word in VLM_ANSWER_WORDS:
        piece = word[0]
        for ch in word[1:]:
            merges.append((piece, ch))
            piece += ch
            vocab.setdefault(piece, len(vocab))
    space = _byte_symbols()[ord(" ")]  # "Ġ"
    for word in VLM_ANSWER_WORDS:  # after the word's own merges, so " yes" ends as one token
        merges.append((space, word))
        vocab[space + word] = len(vocab)
    for token in QWEN_SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        eos_token="<|im_end|>",  # as Qwen2.5-VL-Instruct's tokenizer_config
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in QWEN_SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
    )
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    return tokenizer


def bert_wordpiece_tokenizer(max_length: int = 256):
    """BERT's uncased WordPiece tokenizer (Grounding DINO's text encoder) with a vocabulary made here, laid out
    as bert-base-uncased's: [PAD] 0, [unused*] 1..99, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103, then the
    printable ASCII characters from "!" at 999 (so "." is 1012 and "?" 1029, the ids Grounding DINO's model
    reads as phrase separators), then "##" continuations of letters and digits. Every lowercase ASCII word
    tokenizes, one character a token; anything else is [UNK]."""
    from transformers import BertTokenizer  # transformers 5: a `tokenizers` WordPiece model inside

    vocab = {"[PAD]": 0}
    vocab.update({f"[unused{i}]": 1 + i for i in range(99)})
    vocab.update({"[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103})
    vocab.update({f"[unused{99 + i}]": 104 + i for i in range(999 - 104)})
    # BERT's order: punctuation and digits, then the lowercase letters (uncased: no capitals), then {|}~
    for c in [chr(c) for c in range(ord("!"), ord("~") + 1) if not chr(c).isupper()]:
        vocab[c] = len(vocab)
    for c in "0123456789abcdefghijklmnopqrstuvwxyz":
        vocab["##" + c] = len(vocab)
    return BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=max_length)

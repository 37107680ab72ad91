"""A tiny random Llama with a trained tokenizer and a chat template, made from local data only.

Run by the vLLM venv's Python (``tests/support/engines.py`` does it), so the checkpoint is written
by the transformers vLLM loads it with; it imports nothing from the project. The same seed makes the
same bytes on every build. The shape is what the peers need, not what a language model needs:

- head dimension 64 (hidden 128, 2 heads): vLLM's CPU attention kernels refuse 16;
- a Llama-2-style BPE vocabulary with byte fallback (``<0x00>``…``<0xFF>``, so a newline is
  ``<0x0A>``): llama.cpp's chat path crashes on a vocabulary with no newline token, and its
  converter takes this kind (``tokenizer.ggml.model = llama``) without a pre-tokenizer hash;
- a ChatML-like template that renders ``tools``, assistant ``tool_calls`` and ``tool`` messages,
  so a peer accepts a translated tool-use history.

    python tests/support/tiny_llama.py OUT_DIR
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

SEED = 20261201
VOCAB_SIZE = 2048  # trained merges fill it; the specials and 256 byte tokens come first
SPECIALS = ["<unk>", "<s>", "</s>"]
BYTE_TOKENS = [f"<0x{value:02X}>" for value in range(256)]
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>"]
SPACE = "\u2581"  # SentencePiece's word boundary

CHAT_TEMPLATE = (
    "{% if tools %}<|im_start|>system\nTools:\n"
    "{% for tool in tools %}{{ tool | tojson }}{{ '\\n' }}{% endfor %}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}"
    "{% elif message.content %}{% for part in message.content %}"
    "{% if part.type == 'text' %}{{ part.text }}{% endif %}{% endfor %}{% endif %}"
    "{% if message.tool_calls %}{% for call in message.tool_calls %}{{ '\\n' }}<tool_call>"
    "{{ {'name': call.function.name, 'arguments': call.function.arguments} | tojson }}</tool_call>"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def corpus() -> Iterator[str]:
    """Python's language reference, one line at a time (no newlines: they are byte-fallback tokens)."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        for line in topics[name].splitlines():
            if line.strip():
                yield line


def train_tokenizer(out: Path) -> int:
    """Train the BPE merges, then put specials and the 256 byte tokens first, as Llama 2 does."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    def blank() -> Tokenizer:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
        tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first")
        return tokenizer

    trained = blank()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE - len(BYTE_TOKENS), special_tokens=SPECIALS,
                                  limit_alphabet=160, show_progress=False)
    trained.train_from_iterator(corpus(), trainer=trainer)
    learned = json.loads(trained.to_str())["model"]
    ordered = SPECIALS + BYTE_TOKENS + [token for token, _ in sorted(learned["vocab"].items(), key=lambda kv: kv[1])
                                        if token not in SPECIALS and token not in BYTE_TOKENS]
    merges = [tuple(merge.split(" ")) if isinstance(merge, str) else tuple(merge) for merge in learned["merges"]]

    tokenizer = Tokenizer(models.BPE(vocab={token: index for index, token in enumerate(ordered)}, merges=merges,
                                     unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="first")
    tokenizer.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIALS])
    tokenizer.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in CHAT_TOKENS])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<unk>", "add_bos_token": True, "add_eos_token": False, "add_prefix_space": None,
        "model_max_length": 1024, "clean_up_tokenization_spaces": False, "chat_template": CHAT_TEMPLATE,
    }, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps({
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<unk>"}, indent=2))
    return tokenizer.get_vocab_size()


def build_model(out: Path, vocab_size: int) -> None:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=64, max_position_embeddings=1024,
                         rms_norm_eps=1e-5, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0, torch_dtype="float32")
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    model.save_pretrained(out, safe_serialization=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    out = parser.parse_args().out
    vocab_size = train_tokenizer(out)
    build_model(out, vocab_size)
    print(f"tiny Llama written to {out} (vocabulary {vocab_size})")


if __name__ == "__main__":
    main()

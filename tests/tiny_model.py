"""A tiny Llama model directory that real vLLM can serve with ``--load-format dummy``.

No weights are downloaded or written: vLLM fills them with random values (real compute, nonsense text).
What matters for a load tester is that the token counts are known exactly:

* the tokenizer is a WordLevel model over ``<unk>``, ``<s>``, ``</s>`` and the words ``w0000``…``w3999``
  (ids 0, 1, 2, then 3…4002) with a whitespace pre-tokenizer, so a prompt of N such words, separated by
  single spaces, is exactly N tokens;
* it has no post-processor and ``add_bos_token``/``add_eos_token`` are false, so neither the completions
  endpoint (which tokenizes with ``add_special_tokens=True``) nor the chat endpoint adds a BOS: on vLLM
  ``usage.prompt_tokens`` equals the number of words (checked in tests/test_vllm_launcher.py);
* the chat template joins the messages' contents with single spaces and adds nothing else, so a chat
  request whose messages hold N words in total is N prompt tokens too.

Random weights pick any id, the special ones included (about 3 in 4003 per step); ``</s>`` is the EOS,
so use ``ignore_eos`` to get exactly ``max_tokens``, and expect an occasional token whose text is empty
(``<s>``/``</s>``/``<unk>`` are skipped when detokenizing).
"""

from __future__ import annotations

import json
from pathlib import Path

WORDS = tuple(f"w{i:04d}" for i in range(4000))
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")
VOCAB_SIZE = len(SPECIAL_TOKENS) + len(WORDS)

# Joins every message's content with one space: no role markers, no generation prompt, no BOS.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if not loop.first %} {% endif %}{{ message['content'] }}{% endfor %}"
)

_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
    "vocab_size": VOCAB_SIZE,
}


def prompt_of(n_words: int, offset: int = 0) -> str:
    """A prompt of exactly ``n_words`` tokens for the tiny tokenizer."""
    return " ".join(WORDS[(offset + i) % len(WORDS)] for i in range(n_words))


def write_tiny_model(directory: Path) -> Path:
    """Write config.json, tokenizer.json and tokenizer_config.json into ``directory``; return it.

    Idempotent: writing twice into the same directory gives the same files.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    directory.mkdir(parents=True, exist_ok=True)
    vocab = {tok: i for i, tok in enumerate((*SPECIAL_TOKENS, *WORDS))}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Without a decoder, words would be glued together on decode; a WordPiece decoder with an
    # unused prefix puts exactly one space between words.
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    assert tokenizer.get_vocab_size() == VOCAB_SIZE
    tokenizer.save(str(directory / "tokenizer.json"))

    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": _CONFIG["max_position_embeddings"],
        "unk_token": "<unk>",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "pad_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    (directory / "special_tokens_map.json").write_text(
        json.dumps({"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>"})
        + "\n"
    )
    (directory / "config.json").write_text(json.dumps(_CONFIG, indent=2) + "\n")
    (directory / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}) + "\n"
    )
    return directory


def write_lora_adapter(directory: Path, seed: int, rank: int = 8) -> Path:
    """A PEFT LoRA adapter for the tiny model (rank ``rank`` on q_proj and v_proj of both layers), small
    random float32 weights in a hand-written safetensors file (8-byte header length, JSON header, data),
    so no torch is needed to write it. vLLM serves it with ``--enable-lora --lora-modules NAME=DIR``."""
    import numpy as np

    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    hidden = _CONFIG["hidden_size"]
    outs = {"q_proj": _CONFIG["num_attention_heads"] * _CONFIG["head_dim"],
            "v_proj": _CONFIG["num_key_value_heads"] * _CONFIG["head_dim"]}
    tensors = {}
    for layer in range(_CONFIG["num_hidden_layers"]):
        for proj, out in outs.items():
            pre = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[pre + ".lora_A.weight"] = (rng.standard_normal((rank, hidden)) * 0.01).astype("<f4")
            tensors[pre + ".lora_B.weight"] = (rng.standard_normal((out, rank)) * 0.01).astype("<f4")
    header, blobs, offset = {}, [], 0
    for name, arr in tensors.items():
        data = arr.tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    blob = len(head).to_bytes(8, "little") + head + b"".join(blobs)
    (directory / "adapter_model.safetensors").write_bytes(blob)
    (directory / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(outs), "bias": "none",
        "task_type": "CAUSAL_LM", "lora_dropout": 0.0, "fan_in_fan_out": False,
        "base_model_name_or_path": "tiny-llama"}) + "\n")
    return directory

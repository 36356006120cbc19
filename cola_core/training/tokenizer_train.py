"""Train a byte-level BPE tokenizer whose special tokens have fixed ids across every run."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

# Insertion order is the id order: the trainer assigns special tokens ids 0..4 first.
SPECIAL_TOKENS: dict[str, int] = {
    "<|pad|>": 0,
    "<|endoftext|>": 1,
    "<|mask|>": 2,
    "<|im_start|>": 3,
    "<|im_end|>": 4,
}
MIN_VOCAB_SIZE = 300
MAX_VOCAB_SIZE = 200_000


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 4096, out_path: str | Path | None = None
) -> Tokenizer:
    """Train a byte-level BPE (lossless for any string); save it as tokenizer JSON to out_path."""
    if not MIN_VOCAB_SIZE <= vocab_size <= MAX_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size must be in [{MIN_VOCAB_SIZE}, {MAX_VOCAB_SIZE}] "
            f"(256 byte symbols + {len(SPECIAL_TOKENS)} special tokens + merges), got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    for token, token_id in SPECIAL_TOKENS.items():
        if tokenizer.token_to_id(token) != token_id:
            raise RuntimeError(
                f"tokenizers gave {token} id {tokenizer.token_to_id(token)}, expected {token_id}"
            )
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        tokenizer.save(str(out_path))
    return tokenizer

"""Evaluate a checkpoint on a corpus's test split: VAE reconstruction, DiT flow-matching loss, sample quality.

Sample quality compares generated text with real test sentences through word-level metrics fitted
on the train split: in-vocabulary word rate, distinct-1/2 and add-k word-bigram perplexity. Extra
held-out prose files of the corpus (``fortunes_test.jsonl``, ``ood.jsonl`` of ``corpus pocket``) get
their reconstruction accuracy measured too.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..checkpoint import ColaModel
from ..generate import GenerationConfig, generate
from .corpus import read_corpus
from .data import TokenDataset, corpus_split_path, fixed_batches
from .intervals import check_settings, percentile_interval, ratio_of_sums, resample_indices
from .objectives import flow_matching_2l, sample_t
from .text_metrics import BigramLM, distinct_n, first_word_in_vocab, in_vocab_counts, in_vocab_rate, words


PROSE_SPLITS = ("fortunes_test", "ood")   # held-out prose beside the test split: in-domain, out-of-domain


@dataclass
class EvalConfig:
    """What to measure; the generation knobs default to the official sampler's."""

    samples: int = 200                 # half prompted by the first 2-3 words of test sentences, half unprompted
    max_tokens: int = 32
    batch_size: int = 64
    seed: int = 0
    bigram_k: float = 0.01
    resamples: int = 1000              # bootstrap resamples of the generated samples for the intervals
    level: float = 0.95                # their coverage
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def __post_init__(self) -> None:
        check_settings(self.resamples, self.level)


def make_prompts(test_texts: list[str], count: int) -> list[str]:
    """The first 2 or 3 words (alternating) of the first ``count`` test sentences long enough to continue."""
    prompts = []
    for text in test_texts:
        parts = text.split()
        k = 2 + len(prompts) % 2
        if len(parts) > k:
            prompts.append(" ".join(parts[:k]))
        if len(prompts) == count:
            break
    return prompts


@torch.no_grad()
def latent_metrics(model: ColaModel, dataset: TokenDataset, batch_size: int, seed: int) -> dict[str, float]:
    """Token recon accuracy from the posterior mean; FM loss (logit-normal t, posterior samples) vs zero velocity."""
    vae, dit = model.vae, model.dit
    gen = torch.Generator().manual_seed(seed)
    correct = total = 0
    fm_sum = zero_sum = weight = 0.0
    for batch in fixed_batches(dataset, batch_size):
        batch = batch.to(model.device)
        with model.autocast:
            post = vae.encode_ids(batch.ids, batch.lengths)
            n_lengths = batch.latent_lengths
            logits = vae.decode_latents(vae.to_dit_space(post.mean), n_lengths)
            correct += int(((logits.argmax(-1) == batch.ids) & batch.real).sum())
            total += int(batch.real.sum())
            eps = torch.randn(post.mean.shape, generator=gen).to(post.mean)
            z0 = vae.to_dit_space(post.mean + post.std * eps).float()
            z1 = torch.randn(z0.shape, generator=gen).to(z0)
            t = sample_t(len(z0), gen, "logit_normal", 0.0, 1.0).to(z0.device)
            terms = flow_matching_2l(dit, z0.to(model.dtype), z1.to(model.dtype), t, n_lengths)
        fm_sum += float(terms["fm"][0])
        zero_sum += float(terms["zero_velocity"][0])
        weight += float(terms["fm"][1])
    return {"recon_accuracy": correct / max(total, 1), "fm_loss": fm_sum / weight,
            "zero_velocity_loss": zero_sum / weight, "fm_ratio": fm_sum / max(zero_sum, 1e-12)}


def text_metrics(texts: list[str], vocab: set[str], lm: BigramLM) -> dict[str, float]:
    return {"in_vocab": in_vocab_rate(texts, vocab), "distinct_1": distinct_n(texts, 1),
            "distinct_2": distinct_n(texts, 2), "bigram_ppl": lm.perplexity(texts),
            "words_per_text": sum(len(words(t)) for t in texts) / max(len(texts), 1)}


def sample_intervals(continuations: list[str], texts: list[str], vocab: set[str], lm: BigramLM, real_ppl: float,
                     resamples: int, level: float, seed: int) -> dict:
    """Percentile-bootstrap intervals of the in-vocab rate (of ``continuations``) and of the perplexity ratio
    (of ``texts`` over ``real_ppl``): the samples are resampled with replacement, each keeping its continuation
    and full text together; the real text's perplexity is held fixed (thousands of sentences against hundreds)."""
    draws = resample_indices(len(texts), resamples, seed)                          # (resamples, samples)
    hits, total = zip(*in_vocab_counts(continuations, vocab))
    log_prob, events = zip(*lm.text_scores(texts))
    in_vocab = ratio_of_sums(hits, total, draws)
    ratio = torch.exp(-ratio_of_sums(log_prob, events, draws)) / real_ppl
    return {"method": "percentile bootstrap over the generated samples", "level": level, "resamples": resamples,
            "seed": seed, "in_vocab": percentile_interval(in_vocab, level),
            "ppl_ratio_vs_real": percentile_interval(ratio, level)}


def evaluate(model: ColaModel, corpus: str | Path, config: EvalConfig | None = None) -> dict:
    """All metrics as a JSON-ready dict (also holds the generated samples)."""
    config = config or EvalConfig()
    train_texts = read_corpus(corpus_split_path(corpus, "train"))
    test_texts = read_corpus(corpus_split_path(corpus, "test"))
    test = TokenDataset(test_texts, model.tokenizer, config.max_tokens, model.block_size, model.patch_size)
    results: dict = {"latent": latent_metrics(model, test, config.batch_size, config.seed)}
    results["prose_recon"] = {}
    for split in PROSE_SPLITS:
        path = Path(corpus) / f"{split}.jsonl"
        if path.is_file():
            prose = TokenDataset(read_corpus(path), model.tokenizer, config.max_tokens, model.block_size, model.patch_size)
            results["prose_recon"][split] = latent_metrics(model, prose, config.batch_size, config.seed)["recon_accuracy"]

    vocab = {w for text in train_texts for w in words(text)}
    lm = BigramLM(config.bigram_k).fit(train_texts)
    half = config.samples // 2
    prompts = make_prompts(test_texts, half)
    gen_cfg = GenerationConfig(**{**asdict(config.generation),
                                  "seed": config.generation.seed if config.generation.seed is not None else config.seed})
    all_prompts = prompts + [""] * (config.samples - len(prompts))
    outputs = []
    for start in range(0, len(all_prompts), config.batch_size):
        chunk_prompts = all_prompts[start:start + config.batch_size]
        ids = list(range(start, start + len(chunk_prompts)))
        outputs.extend(generate(model, chunk_prompts, gen_cfg, sample_ids=ids))
    continuations = [g.completion for g in outputs]
    prompted = [p + c for p, c in zip(prompts, continuations)]
    unprompted = continuations[len(prompts):]
    full = prompted + unprompted
    results["samples"] = {
        "all": {**text_metrics(full, vocab, lm), "in_vocab": in_vocab_rate(continuations, vocab)},
        "prompted": {**text_metrics(prompted, vocab, lm), "in_vocab": in_vocab_rate(continuations[:len(prompts)], vocab)},
        "unprompted": text_metrics(unprompted, vocab, lm),
        "real_test": text_metrics(test_texts, vocab, lm),
    }
    for name, texts in (("prompted", continuations[:len(prompts)]), ("unprompted", unprompted)):
        first, later = first_word_in_vocab(texts, vocab)
        results["samples"][name].update(in_vocab_first_word=first, in_vocab_later_words=later)
    real_ppl = results["samples"]["real_test"]["bigram_ppl"]
    results["samples"]["ppl_ratio_vs_real"] = results["samples"]["all"]["bigram_ppl"] / real_ppl
    results["samples"]["interval"] = sample_intervals(continuations, full, vocab, lm, real_ppl, config.resamples,
                                                      config.level, config.seed)
    results["generation"] = asdict(gen_cfg)
    results["examples"] = [{"prompt": p, "continuation": c} for p, c in zip(all_prompts, continuations)]
    results["checkpoint"] = model.source
    results["fingerprint"] = model.fingerprint      # ties the numbers to exact weights (see the pocket tests)
    return results


def format_table(results: dict) -> str:
    """A plain-text table of the headline numbers (also valid Markdown)."""
    lat, smp = results["latent"], results["samples"]
    lines = ["| metric | value |", "|---|---|",
             f"| VAE token recon accuracy (test, posterior mean) | {lat['recon_accuracy']:.2%} |",
             f"| DiT FM loss / zero-velocity loss (test) | {lat['fm_loss']:.4f} / {lat['zero_velocity_loss']:.4f}"
             f" (ratio {lat['fm_ratio']:.3f}) |"]
    lines += [f"| VAE token recon accuracy ({split}, posterior mean) | {accuracy:.2%} |"
              for split, accuracy in results.get("prose_recon", {}).items()]
    lines += ["", "| texts | in-vocab | distinct-1 | distinct-2 | bigram ppl | words/text |", "|---|---|---|---|---|---|"]
    for name in ("all", "prompted", "unprompted", "real_test"):
        m = smp[name]
        lines.append(f"| {name} | {m['in_vocab']:.1%} | {m['distinct_1']:.3f} | {m['distinct_2']:.3f} | "
                     f"{m['bigram_ppl']:.0f} | {m['words_per_text']:.1f} |")
    if "in_vocab_first_word" in smp["prompted"]:     # results written before this was measured have none
        lines.append("\nin-vocab by position (first generated word / later words): " + ", ".join(
            f"{name} {smp[name]['in_vocab_first_word']:.1%} / {smp[name]['in_vocab_later_words']:.1%}"
            for name in ("prompted", "unprompted")))
    lines.append(f"\nsample perplexity / real-text perplexity: {smp['ppl_ratio_vs_real']:.2f}x")
    if "interval" in smp:           # results written before intervals were measured have none
        ci = smp["interval"]
        lines.append(f"\n{ci['level']:.0%} bootstrap interval over the {len(results['examples'])} samples "
                     f"({ci['resamples']} resamples): in-vocab (all) {ci['in_vocab'][0]:.1%} to "
                     f"{ci['in_vocab'][1]:.1%}, perplexity ratio {ci['ppl_ratio_vs_real'][0]:.2f}x to "
                     f"{ci['ppl_ratio_vs_real'][1]:.2f}x")
    return "\n".join(lines)

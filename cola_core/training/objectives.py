"""Training objectives: stage-1 VAE loss and the official stage-2 "2L" flow-matching loss.

Each objective returns ``Terms``: name -> (sum, count) over its elements, so the trainer can
normalise by the *global* count across ranks and gradient-accumulation micro-batches (DDP then
gives exactly the single-process loss). All randomness is drawn for the global batch from one
generator and then sliced to this rank's rows, so it does not depend on the number of ranks.
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..constants import TIME_SCALE
from ..dit import ColaDiT
from ..text_codec import TokenBatch
from ..tokenizer import ColaTokenizer
from ..two_l import two_l_velocity
from ..vae import ColaTextVAE, Posterior

Terms = dict[str, tuple[torch.Tensor, torch.Tensor]]


def _ce(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Per-token cross-entropy (B, L) in fp32."""
    return F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")


def token_valid(batch: TokenBatch) -> torch.Tensor:
    """(B, L) bool: positions inside each sample's padded length (text, eos and block padding)."""
    return torch.arange(batch.ids.shape[1], device=batch.ids.device)[None] < batch.lengths[:, None]


def cut_prefixes(batch: TokenBatch, prob: float, gen: torch.Generator, pad_id: int, chunk: int) -> TokenBatch:
    """With probability ``prob`` per text, keep a random non-empty proper prefix without eos (prompt-like)."""
    if prob <= 0:
        return batch
    real_len = batch.real.sum(1)
    cut = torch.rand(real_len.shape, generator=gen, device=gen.device) < prob
    keep = (torch.rand(real_len.shape, generator=gen, device=gen.device) * (real_len - 1).clamp(min=1)).long() + 1
    cut = (cut & (real_len > 1)).to(batch.ids.device)
    keep = torch.where(cut, keep.to(batch.ids.device), real_len)
    pos = torch.arange(batch.ids.shape[1], device=batch.ids.device)[None]
    real = pos < keep[:, None]
    ids = batch.ids.masked_fill(~real, pad_id)
    lengths = torch.where(cut, keep + (-keep) % chunk, batch.lengths)
    return replace(batch, ids=ids, lengths=lengths, real=real)


def word_start_ids(tokenizer: ColaTokenizer) -> torch.Tensor:
    """(V,) bool: tokens that begin a word after a space (" river"), where a cropped row may start."""
    pieces = (tokenizer.decode([i], skip_special_tokens=False) for i in range(tokenizer.vocab_size))
    return torch.tensor([len(p) > 1 and p[0] == " " and p[1].isalpha() for p in pieces], dtype=torch.bool)


def crop_starts(batch: TokenBatch, prob: float, gen: torch.Generator, pad_id: int, chunk: int,
                word_start: torch.Tensor) -> TokenBatch:
    """With probability ``prob`` per text, drop its first k >= 1 blocks (``chunk`` tokens each) so the row starts
    at a later block whose first token begins a word (``word_start`` (V,) bool), k uniform among those blocks.
    Packed pretraining rows start mid-text; a row of one short text otherwise always starts at its beginning, and
    the no-context pass (the unconditional branch of guidance) then learns only texts' first blocks."""
    if prob <= 0:
        return batch
    batch_size, width = batch.ids.shape
    blocks = width // chunk
    pick = torch.rand(batch_size, generator=gen, device=gen.device) < prob
    score = torch.rand(batch_size, blocks, generator=gen, device=gen.device)
    device = batch.ids.device
    starts = batch.ids[:, ::chunk]                                                    # (B, blocks)
    later = torch.arange(blocks, device=device)[None] >= 1
    inside = torch.arange(blocks, device=device)[None] * chunk < batch.token_lengths[:, None]
    allowed = word_start.to(device)[starts] & later & inside
    k = torch.where(allowed, score.to(device), -1.0).argmax(1)                        # (B,) the kept first block
    k = torch.where(pick.to(device) & allowed.any(1), k, 0)
    shift = k * chunk                                                                 # (B,) tokens dropped
    pos = torch.arange(width, device=device)[None] + shift[:, None]                  # (B, L) source positions
    real = batch.real.gather(1, pos.clamp(max=width - 1)) & (pos < width)
    ids = batch.ids.gather(1, pos.clamp(max=width - 1)).masked_fill(~real, pad_id)
    return replace(batch, ids=ids, lengths=batch.lengths - shift, real=real)


def bert_mask(valid: torch.Tensor, prob: float, seq_prob: float, gen: torch.Generator) -> torch.Tensor:
    """(B, L) bool: in a ``seq_prob`` share of sequences, each valid token masked with ``prob``."""
    seq = torch.rand(valid.shape[0], generator=gen, device=gen.device) < seq_prob
    tok = torch.rand(valid.shape, generator=gen, device=gen.device) < prob
    return (seq[:, None] & tok).to(valid.device) & valid


def _randn(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=gen.device)


# ---------------------------------------------------------------------------------------------
# Stage 1: Text VAE
# ---------------------------------------------------------------------------------------------
def vae_terms(vae: ColaTextVAE, batch: TokenBatch, gen: torch.Generator, rows: slice, *, pad_id: int,
              prefix_prob: float, mask_prob: float, mask_seq_prob: float, decoder_noise: float,
              decoder_noise_prob: float = 1.0, prior: ColaDiT | None = None, prior_prob: float = 0.0,
              prior_t_max: float = 0.0, decoder_swap: float = 0.0, decoder_swap_prob: float = 1.0,
              decoder_swap_noised: bool = False) -> Terms:
    """recon CE from a posterior sample (all tokens), KL(q||N(0,I)) per channel, CE on masked tokens.

    ``decoder_noise`` adds N(0, s^2) with s ~ U(0, decoder_noise) to the decoder input of a share
    ``decoder_noise_prob`` of the rows, so the decoder learns to read imperfect latents (the prior's samples are
    never exact) from context while the other rows keep it exact on clean ones. With a frozen ``prior`` DiT, a
    share ``prior_prob`` of the rows instead decode the prior's own one-step estimate x0 = z_t - t v from
    z_t at t ~ U(0, ``prior_t_max``) given the true clean blocks before (the 2L layout): the errors the
    prior actually makes. ``decoder_swap`` replaces that share of the decoder's input latents by latents from
    random positions of the micro-batch (the target stays the true token), in a share ``decoder_swap_prob`` of
    the rows (drawn independently of the noised ones): the block-2 prior's typical error is a well-formed
    latent of the wrong piece, which only context can correct. ``decoder_swap_noised`` swaps in the noised rows
    only, before their noise, so clean rows stay exact and the decoder can tell when to lean on context.
    """
    cfg = vae.config
    chunk = cfg.patch_size * cfg.block_size
    batch = cut_prefixes(batch, prefix_prob, gen, pad_id, chunk)
    valid = token_valid(batch)
    masked = bert_mask(valid, mask_prob, mask_seq_prob, gen)
    n, channels = batch.ids.shape[1] // cfg.patch_size, cfg.latent_dim
    eps = _randn((len(valid), n, channels), gen)
    sigma = torch.rand(len(valid), generator=gen, device=gen.device) * decoder_noise
    if decoder_noise_prob < 1:   # drawn only then, so runs without it keep their random stream
        sigma = sigma * (torch.rand(len(valid), generator=gen, device=gen.device) < decoder_noise_prob)
    extra = _randn((len(valid), n, channels), gen) * sigma[:, None, None]
    if prior is not None:   # drawn only then, so runs without a prior keep their random stream
        use_prior = torch.rand(len(valid), generator=gen, device=gen.device) < prior_prob
        t = torch.rand(len(valid), generator=gen, device=gen.device) * prior_t_max
        z1 = _randn((len(valid), n, channels), gen)
        device = batch.ids.device
        use_prior, t, z1 = use_prior[rows].to(device), t[rows].to(device), z1[rows].to(device)
    if decoder_swap > 0:    # drawn only then, so runs without it keep their random stream
        swap = torch.rand(len(valid), n, generator=gen, device=gen.device) < decoder_swap
        source = torch.rand(len(valid), n, generator=gen, device=gen.device)[rows]
        if decoder_swap_prob < 1:   # drawn only then, like the noise's row share
            swap &= (torch.rand(len(valid), generator=gen, device=gen.device) < decoder_swap_prob)[:, None]
        if decoder_swap_noised:
            swap &= (sigma > 0)[:, None]
        swap = swap[rows]
    batch, valid, masked = batch.rows(rows), valid[rows], masked[rows]
    eps, extra = eps[rows].to(batch.ids.device), extra[rows].to(batch.ids.device)

    post = vae.encode_ids(batch.ids, batch.lengths, mask_token_ids=masked)
    z = vae.to_dit_space(post.mean + post.std * eps)
    if decoder_swap > 0 and decoder_swap_noised:
        z = swap_latents(z, batch.latent_lengths, swap.to(z.device), source.to(z.device))
    z = z + extra
    if decoder_swap > 0 and not decoder_swap_noised:
        z = swap_latents(z, batch.latent_lengths, swap.to(z.device), source.to(z.device))
    if prior is not None:
        z = torch.where(use_prior[:, None, None], prior_estimate(prior, z.detach(), z1, t, batch.latent_lengths), z)
    logits = vae.decode_latents(z, batch.latent_lengths)
    ce = _ce(logits, batch.ids)
    kl = post.kl_to_standard_normal().float().mean(-1)          # (B, n) per channel
    correct = (logits.argmax(-1) == batch.ids) & batch.real
    return {
        "recon": ((ce * valid).sum(), valid.sum()),
        "kl": ((kl * post.valid).sum(), post.valid.sum()),
        "mask": ((ce * masked).sum(), masked.sum()),
        "acc": (correct.sum().float(), batch.real.sum()),
        "post_std": ((post.std.float().mean(-1) * post.valid).sum(), post.valid.sum()),
    }


def swap_latents(z: torch.Tensor, n_lengths: torch.Tensor, swap: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """z (B, n, C) with each position where ``swap`` (B, n) holds replaced by the latent at a real position
    (< its row's length) of any row, chosen by ``source`` (B, n) uniform in [0, 1)."""
    real = torch.arange(z.shape[1], device=z.device)[None, :] < n_lengths[:, None]       # (B, n)
    pool = z[real]                                                                        # (R, C) real latents
    picked = pool[(source * len(pool)).long().clamp_max(len(pool) - 1)]                   # (B, n, C)
    return torch.where((swap & real)[..., None], picked, z)


@torch.no_grad()
def prior_estimate(dit: ColaDiT, z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor, n_lengths: torch.Tensor
                   ) -> torch.Tensor:
    """The DiT's one-step clean estimate z_t - t v of every block from z_t = (1-t) z0 + t z1, each block seeing
    the true clean blocks before it. z0, z1 (B, n, C) DiT space; t (B,) in [0, 1]; -> (B, n, C)."""
    tt = t[:, None, None]
    zt = (1 - tt) * z0 + tt * z1
    timestep = (t * TIME_SCALE).to(torch.bfloat16).float()[:, None].expand(z0.shape[:2])   # t*T in bf16
    return zt - tt * two_l_velocity(dit, z0, zt, timestep, n_lengths)


# ---------------------------------------------------------------------------------------------
# Stage 2: DiT flow matching, "2L" layout
# ---------------------------------------------------------------------------------------------
def sample_t(batch: int, gen: torch.Generator, sampling: str, loc: float, scale: float) -> torch.Tensor:
    """(B,) t in (0, 1): logit-normal sigmoid(loc + scale*N(0,1)) or uniform."""
    if sampling == "uniform":
        return torch.rand(batch, generator=gen, device=gen.device)
    return torch.sigmoid(loc + scale * torch.randn(batch, generator=gen, device=gen.device))


def prompt_block_clean(n: int, block_size: int, batch: int, prob: float, gen: torch.Generator) -> torch.Tensor:
    """(B, n) bool: per block with prob ``prob`` its first k in [1, bs-1] latents are clean prompt latents."""
    blocks = -(-n // block_size)
    pick = torch.rand(batch, blocks, generator=gen, device=gen.device) < prob
    if block_size < 2:
        return torch.zeros(batch, n, dtype=torch.bool, device=gen.device)
    k = torch.randint(1, block_size, (batch, blocks), generator=gen, device=gen.device)
    within = torch.arange(block_size, device=gen.device)
    clean = (within[None, None] < k[..., None]) & pick[..., None]
    return clean.reshape(batch, blocks * block_size)[:, :n]


def flow_matching_2l(dit: ColaDiT, z0: torch.Tensor, z1: torch.Tensor, t: torch.Tensor, n_lengths: torch.Tensor,
                     clean: torch.Tensor | None = None, prompt: torch.Tensor | None = None,
                     first_block_weight: float = 1.0) -> Terms:
    """Loss on the noisy half of [z0 | z_t]: mean_c (v - (z1 - z0))^2 weighted by real, non-prompt latents.

    z0, z1 (B, n, C) DiT-space; t (B,) in [0, 1]; n_lengths (B,); clean (B, n) prompt latents (t=0, weight 0)
    whose values are ``prompt`` (B, n, C) when given, else z0. ``first_block_weight`` scales the weight of each
    row's first block (an unprompted sample draws it without guidance; 1 is the official uniform weight).
    Also returns ``zero_velocity``: the same loss for predicting v = 0 (the trivial baseline).
    """
    batch, n, _ = z0.shape
    device = z0.device
    clean = torch.zeros(batch, n, dtype=torch.bool, device=device) if clean is None else clean
    t_tok = t[:, None].expand(batch, n).masked_fill(clean, 0.0)
    zt = (1 - t_tok[..., None]) * z0 + t_tok[..., None] * z1
    if prompt is not None:
        zt = torch.where(clean[..., None], prompt.to(zt.dtype), zt)
    v = two_l_velocity(dit, z0, zt, (t_tok * TIME_SCALE).to(torch.bfloat16).float(), n_lengths)   # t*T in bf16
    weight = ((torch.arange(n, device=device)[None] < n_lengths[:, None]) & ~clean).float()
    if first_block_weight != 1.0:
        weight[:, :dit.config.block_size] *= first_block_weight
    return velocity_terms(v, z1 - z0, weight)


def velocity_terms(v: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> Terms:
    """``fm``: mean_c (v - target)^2 over the weighted latents; ``zero_velocity``: the same for v = 0."""
    mse = (v.float() - target.float()).pow(2).mean(-1)
    return {"fm": ((mse * weight).sum(), weight.sum()),
            "zero_velocity": ((target.float().pow(2).mean(-1) * weight).sum(), weight.sum())}


def prompt_encoding_ids(batch: TokenBatch, clean: torch.Tensor, block_size: int, patch: int, pad_id: int) -> torch.Tensor:
    """Token ids as generation encodes a prompt ending inside a block: the rest of each block holding
    prompt (clean) latents is replaced by pad ids. ids (B, L), clean (B, n) -> (B, L)."""
    batch_size, n = clean.shape
    blocks = clean.view(batch_size, -1, block_size) if n % block_size == 0 else None
    if blocks is None:
        raise ValueError(f"latent length {n} is not a multiple of block_size {block_size}")
    tail = (blocks.any(-1, keepdim=True) & ~blocks).reshape(batch_size, n)
    tail_tokens = tail.repeat_interleave(patch, dim=1)
    return batch.ids.masked_fill(tail_tokens & token_valid(batch), pad_id)


def dit_terms(dit: ColaDiT, vae: ColaTextVAE, batch: TokenBatch, gen: torch.Generator, rows: slice, *,
              t_sampling: str, t_loc: float, t_scale: float, prompt_block_prob: float, posterior_mean: bool,
              ref_vae: ColaTextVAE | None = None, prompt_pad_id: int | None = None,
              first_block_weight: float = 1.0, crop_start_prob: float = 0.0,
              word_start: torch.Tensor | None = None, pad_id: int | None = None) -> Terms:
    """Flow matching on the VAE's DiT-space latents; with ``ref_vae`` (joint training) the VAE also gets
    recon CE and KL(q || q_ref) to the frozen reference encoder.

    With ``prompt_pad_id``, simulated prompt latents are the posterior means of the prompt encoded
    with pad ids after it, exactly what generation pins (the official recipe uses the full text's
    latents, which generation never sees: the encoder is bidirectional inside a block).
    With ``crop_start_prob`` > 0 rows start at a later word-initial block with that probability
    (:func:`crop_starts`, needing ``word_start`` and ``pad_id``), as packed pretraining rows do.
    """
    cfg = vae.config
    if crop_start_prob > 0:
        batch = crop_starts(batch, crop_start_prob, gen, pad_id, dit.config.block_size * cfg.patch_size, word_start)
    n, channels, batch_size = batch.ids.shape[1] // cfg.patch_size, cfg.latent_dim, len(batch.ids)
    eps = _randn((batch_size, n, channels), gen)
    z1 = _randn((batch_size, n, channels), gen)
    t = sample_t(batch_size, gen, t_sampling, t_loc, t_scale)
    clean = prompt_block_clean(n, dit.config.block_size, batch_size, prompt_block_prob, gen)
    device = batch.ids.device
    batch = batch.rows(rows)
    eps, z1, t, clean = eps[rows].to(device), z1[rows].to(device), t[rows].to(device), clean[rows].to(device)

    joint = ref_vae is not None
    with torch.set_grad_enabled(joint and torch.is_grad_enabled()):
        post = vae.encode_ids(batch.ids, batch.lengths)
        z0 = vae.to_dit_space(post.mean if posterior_mean else post.mean + post.std * eps)
    n_lengths = batch.latent_lengths
    prompt = None
    if prompt_pad_id is not None and bool(clean.any()):
        with torch.no_grad():
            ids = prompt_encoding_ids(batch, clean, dit.config.block_size, cfg.patch_size, prompt_pad_id)
            prompt = vae.to_dit_space(vae.encode_ids(ids, batch.lengths).mean)
    terms = flow_matching_2l(dit, z0 if joint else z0.detach(), z1, t, n_lengths, clean, prompt, first_block_weight)
    if joint:
        valid = token_valid(batch)
        ce = _ce(vae.decode_latents(z0, n_lengths), batch.ids)
        with torch.no_grad():
            ref = ref_vae.encode_ids(batch.ids, batch.lengths)
        kl = gaussian_kl(post, ref).mean(-1)
        terms["recon"] = ((ce * valid).sum(), valid.sum())
        terms["kl_ref"] = ((kl * post.valid).sum(), post.valid.sum())
    return terms


def gaussian_kl(q: Posterior, p: Posterior) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians per latent and channel, (B, n, C)."""
    return 0.5 * (p.logvar - q.logvar + (q.logvar.exp() + (q.mean - p.mean).pow(2)) / p.logvar.exp() - 1.0)


# ---------------------------------------------------------------------------------------------
# Latent statistics -> scaling/shifting factors
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def latent_statistics(vae: ColaTextVAE, batches: list[TokenBatch], gen: torch.Generator) -> tuple[float, float]:
    """(mean, std) of posterior samples in the encoder's raw space over the valid latents of ``batches``."""
    total, total_sq, count = 0.0, 0.0, 0
    for batch in batches:
        post = vae.encode_ids(batch.ids, batch.lengths)
        z = (post.mean + post.std * _randn(tuple(post.mean.shape), gen).to(post.mean.device)).double()
        z = z[post.valid]
        total, total_sq, count = total + z.sum().item(), total_sq + z.pow(2).sum().item(), count + z.numel()
    mean = total / count
    return mean, (total_sq / count - mean * mean) ** 0.5


@torch.no_grad()
def set_latent_scaling(vae: ColaTextVAE, shift: float, scale: float) -> None:
    """Write scaling/shifting factors into the config and fold the change into ``decoder.in_layer``.

    The decoder consumes DiT-space latents (spec pitfall 10): with the new factors its input becomes
    z' = (z - shift)*scale, so in_layer is rewritten to give the same output on z' as before on
    z_old = (z - shift_old)*scale_old. Reconstruction is unchanged.
    """
    cfg = vae.config
    layer = vae.decoder.in_layer
    if layer.bias is None:
        shift = cfg.shifting_factor   # a shift change cannot be folded without a bias
    # z_old = z' * (scale_old/scale) + (shift - shift_old) * scale_old
    ratio = cfg.scaling_factor / scale
    offset = (shift - cfg.shifting_factor) * cfg.scaling_factor
    if layer.bias is not None:
        layer.bias += layer.weight.sum(1) * offset
    layer.weight *= ratio
    cfg.scaling_factor, cfg.shifting_factor = float(scale), float(shift)

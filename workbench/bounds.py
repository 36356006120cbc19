"""Posterior draws and the bounds built on them, shared by diagnostics and the likelihood.

One estimator for every bound, so two numbers that should differ only by their prior do: the rate
term of an ELBO is ``mean_k [log q(z_k|x) - log p(z_k)]`` over the same K posterior draws whatever
the prior (N(0, I) or the DiT), and ``iw_bound_nats`` is the K-sample importance-weighted bound
(Burda et al. 2016) on ``-log p(x)``, equal to the ELBO at K = 1 and tighter as K grows. Draws are
per text (``workbench.latents.stream_generator``), so no number depends on the batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from cola_core import ColaModel
from cola_core.constants import LOG_2PI
from cola_core.text_codec import TokenBatch, decode_logits
from cola_core.vae import Posterior

from .latents import text_noise


def posterior_draws(post: Posterior, lengths: torch.Tensor, samples: int, seed: int, sample_ids: Sequence[int]
                    ) -> torch.Tensor:
    """(K, B, n, C) VAE-space draws from q(z|x); draw k of text b is seeded by (seed, sample id, k) alone.
    ``lengths`` (B,) valid latents per text; padding rows hold the mean."""
    batch, n, channels = post.mean.shape
    eps = torch.stack([text_noise(lengths.tolist(), n, channels, seed, sample_ids, "posterior", k)
                       for k in range(samples)]).to(post.mean.device)
    return post.mean + post.std * eps


def gaussian_log_density(z: torch.Tensor, post: Posterior) -> torch.Tensor:
    """log q(z|x) per latent and channel (..., n, C) for a diagonal Gaussian posterior."""
    return -0.5 * ((z - post.mean).pow(2) / post.logvar.exp() + post.logvar + LOG_2PI)


def standard_normal_log_density(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per latent and channel."""
    return -0.5 * (z.pow(2) + LOG_2PI)


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """logits (B, L, V), ids (B, L) -> per-token negative log-likelihood (B, L) in nats."""
    return F.cross_entropy(logits.float().transpose(1, 2), ids, reduction="none")


def decoder_nll(model: ColaModel, z: torch.Tensor, batch: TokenBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """DiT-space z (B, n, C) -> (NLL (B, L) nats, greedy ids (B, L))."""
    logits = decode_logits(model, z, batch.latent_lengths)
    return token_nll(logits, batch.ids), logits.argmax(-1)


@dataclass
class DrawTerms:
    """Per posterior draw k and text b: what every bound needs (nats)."""

    nll_tokens: torch.Tensor   # (K, B, L) decoder NLL per decoded token (block padding included)
    log_q: torch.Tensor        # (K, B) log q(z_k|x) over the text's latents
    log_normal: torch.Tensor   # (K, B) log N(z_k; 0, I)

    @property
    def nll(self) -> torch.Tensor:
        """(K, B) decoder NLL over every decoded token."""
        return self.nll_tokens.sum(-1)


def draw_terms(model: ColaModel, batch: TokenBatch, post: Posterior, draws: torch.Tensor) -> DrawTerms:
    """Decoder NLL, log q and log N(0, I) of each VAE-space draw (K, B, n, C) of one batch (float64 sums, so
    bounds built from the same draws compare exactly)."""
    valid = post.valid[..., None]
    nll = torch.stack([decoder_nll(model, model.vae.to_dit_space(z), batch)[0] for z in draws])
    log_q = torch.stack([(gaussian_log_density(z, post) * valid).double().sum((1, 2)) for z in draws])
    log_normal = torch.stack([(standard_normal_log_density(z) * valid).double().sum((1, 2)) for z in draws])
    return DrawTerms(nll_tokens=nll.double().cpu(), log_q=log_q.cpu(), log_normal=log_normal.cpu())


def vae_space_log_prior(model: ColaModel, log_p_dit: torch.Tensor, dims: torch.Tensor) -> torch.Tensor:
    """log p of VAE-space latents from the DiT's density of their DiT-space image ``(z - shift) * scale``:
    ``log p_dit + dims * log|scale|`` (``dims`` = n*C per text)."""
    return log_p_dit + dims * math.log(abs(model.vae_config.scaling_factor))


def rate_nats(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """(K, B) -> (B,): the Monte-Carlo KL term mean_k [log q(z_k|x) - log p(z_k)], the one estimator of both ELBOs."""
    return (log_q - log_p).mean(0)


def iw_bound_nats(nll: torch.Tensor, log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """(K, B) decoder NLL, log q and log p of K draws -> (B,) importance-weighted bound on -log p(x) in nats."""
    log_w = -nll + log_p - log_q
    return -(torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0]))

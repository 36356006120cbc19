"""``Workbench``: one loaded checkpoint and the research verbs over it.

Load once (``Workbench.load()``), then encode texts to :class:`Latents`, decode them back, generate,
step through the sampler with hooks, and capture trajectories. Inputs are validated before any
model runs: every problem raises :class:`WorkbenchError` (a ``ValueError``) naming it.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch

from cola_core import ColaModel, load_pretrained
from cola_core.attention import pad_rows
from cola_core.config import MAX_POSITIONS
from cola_core.constants import LN2
from cola_core.generate import BlockwiseSampler, Generation, GenerationConfig
from cola_core.hook_points import tapping
from cola_core.text_codec import decode_logits, decode_text, encode_tokens, token_slots
from cola_core.tokenizer import display_text

from .diagnostics import Diagnosis, diagnose
from .errors import WorkbenchError, as_workbench_error
from .hooks import Callback, HookFn, HookHandle, HookRegistry, Hooks
from .inside.cache import ActivationCache, CallTaps, PatchValue
from .inside.names import NamesFilter, RunNames, generation_names, sampler_stages, vae_names
from .latents import Latents, block_noise
from .likelihood import text_log_likelihood
from .monitor import data_norm
from .projection import Projection, fit_projection
from .sampler_session import SamplerSession
from .textbatch import check_texts, length_groups, tokenize
from .trajectory import Trajectory


@dataclass
class DecodedText:
    """Greedy decode of one text's latents, over the L slots of the encoded text's own tokens (the slots
    after them only encode block padding); ``Workbench.decode(..., all_slots=True)`` keeps every slot."""

    text: str                    # the L decoded tokens, special tokens as visible markers (workbench.display)
    token_ids: list[int]         # argmax token per slot (L,)
    probs: torch.Tensor          # (L,) probability of the chosen token
    entropy_bits: torch.Tensor   # (L,) entropy of the decoder distribution, in bits

    @property
    def mean_prob(self) -> float:
        return float(self.probs.mean())


@dataclass
class Decoded:
    """Decoded texts of a :class:`Latents` batch."""

    items: list[DecodedText]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> DecodedText:
        return self.items[i]

    @property
    def texts(self) -> list[str]:
        return [d.text for d in self.items]


@dataclass
class Roundtrip:
    """encode -> decode of texts, with the fraction of real tokens reproduced exactly."""

    latents: Latents
    decoded: Decoded
    token_accuracy: list[float]

    @property
    def texts(self) -> list[str]:
        return self.decoded.texts


def token_accuracy(latents: Latents, decoded: Decoded) -> list[float]:
    """Per text: fraction of source tokens that the decoded slots reproduce (exactly the slots shown)."""
    out = []
    for ids, d in zip(latents.token_ids, decoded.items):
        n = min(len(ids), len(d.token_ids))
        out.append(sum(a == b for a, b in zip(ids[:n], d.token_ids[:n])) / max(len(ids), 1))
    return out


class Workbench:
    """A loaded Cola checkpoint with encode / decode / generate / sampler / hooks."""

    def __init__(self, model: ColaModel):
        self.model = model
        self.registry = HookRegistry()

    @classmethod
    def load(cls, checkpoint: str | Path | None = None, device: str | torch.device | None = None,
             dtype: str | torch.dtype | None = None) -> "Workbench":
        """Load a checkpoint (a folder, ``pocket``/``pocket-chat``, a Hub id; None: the pocket) on ``device``
        (None: cpu)."""
        return cls(load_pretrained(checkpoint, device=device or "cpu", dtype=dtype))

    # -- facts about the checkpoint ---------------------------------------------------------------
    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    @property
    def block_size(self) -> int:
        return self.model.block_size

    @property
    def patch_size(self) -> int:
        return self.model.patch_size

    @property
    def channels(self) -> int:
        return self.model.vae_config.latent_dim

    @property
    def tokenizer(self):
        return self.model.tokenizer

    # -- validation --------------------------------------------------------------------------------
    def check_latents(self, latents: Latents) -> None:
        """Raise if latents come from another checkpoint, have the wrong shape or hold NaN/inf."""
        if not isinstance(latents, Latents):
            raise WorkbenchError(f"expected Latents, got {type(latents).__name__}")
        if len(latents) == 0:
            raise WorkbenchError("empty Latents batch")
        if latents.fingerprint != self.fingerprint:
            raise WorkbenchError(f"latents were made by another checkpoint (fingerprint {latents.fingerprint[:12]} "
                                 f"!= {self.fingerprint[:12]}); encode the texts with this workbench")
        want = (self.block_size, self.channels)
        for i, z in enumerate(latents.z):
            if tuple(z.shape[1:]) != want or z.shape[0] < 1:
                raise WorkbenchError(f"latents of text {i} are shaped {tuple(z.shape)}; this checkpoint needs "
                                     f"(n_blocks >= 1, {want[0]}, {want[1]})")
            if z.shape[0] * want[0] > MAX_POSITIONS:
                raise WorkbenchError(f"latents of text {i} have {z.shape[0] * want[0]} positions; the model supports "
                                     f"{MAX_POSITIONS}")
            if not torch.isfinite(z).all():
                raise WorkbenchError(f"latents of text {i} contain NaN or infinite values")

    # -- encode / decode ---------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, texts: str | Sequence[str], pad_to: int | str | None = None, sample: bool = False,
               seed: int | None = None, sample_ids: Sequence[int] | None = None, batch_size: int = 32) -> Latents:
        """Texts -> Latents (DiT-space posterior means, or samples with ``sample=True``).

        Each text is right-padded with pad tokens to whole blocks; ``pad_to`` (a block count or
        ``"longest"``) pads further with more pad tokens (the encoder is block-causal, so the real
        blocks do not change). A text's result does not depend on the other texts: texts are encoded
        in groups of one length, and with a ``seed`` the posterior noise of block k of text i is the
        official per-sample draw for ``(seed, sample_ids[i], k)`` (``block_noise``).
        """
        texts = check_texts(texts)
        tokens = tokenize(self.model, texts, pad_to)
        sample_ids = list(range(len(tokens.ids))) if sample_ids is None else list(sample_ids)
        if len(sample_ids) != len(tokens.ids):
            raise WorkbenchError(f"{len(sample_ids)} sample ids for {len(tokens.ids)} texts")
        bs, channels = self.block_size, self.channels
        n_blocks = (tokens.latent_lengths // bs).tolist()
        posterior: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}   # text -> (mean, std) (n_blocks, bs, C)
        for rows in length_groups(n_blocks, batch_size):
            width = n_blocks[rows[0]]
            post = encode_tokens(self.model, tokens.rows(rows))
            for k, i in enumerate(rows):
                posterior[i] = (post.mean[k, :width * bs].cpu().view(width, bs, channels),
                                post.std[k, :width * bs].cpu().view(width, bs, channels))
        means, stds = [posterior[i][0] for i in range(len(texts))], [posterior[i][1] for i in range(len(texts))]
        values = [m + s * block_noise(n, bs, channels, seed, sid) if sample else m
                  for m, s, n, sid in zip(means, stds, n_blocks, sample_ids)]
        token_ids = [row[real].tolist() for row, real in zip(tokens.ids.cpu(), tokens.real.cpu())]
        return Latents(z=[self.model.vae.to_dit_space(v) for v in values],
                       alignment=[token_slots(len(ids), n * bs, self.patch_size) for ids, n in zip(token_ids, n_blocks)],
                       token_ids=token_ids, texts=texts, fingerprint=self.fingerprint, mean=means, std=stds)

    def decoder_logits(self, latents: Latents) -> list[torch.Tensor]:
        """Per text (n_blocks*bs*P, V) fp32 decoder logits (whole sequence, block-causal)."""
        self.check_latents(latents)
        lengths = [z.shape[0] * z.shape[1] for z in latents.z]
        flat, _ = pad_rows(torch.cat([z.reshape(-1, self.channels) for z in latents.z]), lengths)
        logits = decode_logits(self.model, flat, torch.tensor(lengths)).cpu()
        return [logits[b, :n * self.patch_size] for b, n in enumerate(lengths)]

    def decode(self, latents: Latents, batch_size: int = 32, all_slots: bool = False) -> Decoded:
        """Greedy decode: text, chosen-token probabilities and entropies per token slot.

        Decoding stops at the encoded text's length (``latents.token_count(i)`` slots; the slots after
        them only encode block padding); ``all_slots=True`` keeps every slot (pad-token slots dropped
        from the text). Special tokens are shown as markers (``⟨eos⟩``), never raw.
        """
        self.check_latents(latents)
        items = []
        for start in range(0, len(latents), batch_size):
            for i, logits in enumerate(self.decoder_logits(latents[start:start + batch_size]), start=start):
                logits = logits if all_slots else logits[:latents.token_count(i)]
                logp = logits.log_softmax(dim=-1)
                chosen = logp.argmax(dim=-1)
                entropy = -(logp.exp() * logp).sum(dim=-1) / LN2
                ids = chosen.tolist()
                text = decode_text(self.model, ids) if all_slots else display_text(ids, self.tokenizer, False)
                items.append(DecodedText(text=text, token_ids=ids,
                                         probs=logp.gather(-1, chosen[:, None])[:, 0].exp(), entropy_bits=entropy))
        return Decoded(items)

    def roundtrip(self, texts: str | Sequence[str]) -> Roundtrip:
        """encode -> decode, with per-text token accuracy."""
        latents = self.encode(texts)
        decoded = self.decode(latents)
        return Roundtrip(latents, decoded, token_accuracy(latents, decoded))

    # -- generation --------------------------------------------------------------------------------
    def config(self, **knobs) -> GenerationConfig:
        """A validated GenerationConfig from keyword knobs (steps, guidance, seed, solver, ...)."""
        with as_workbench_error():
            return GenerationConfig().with_knobs(**knobs)

    def sampler(self, prompts: str | Sequence[str | Sequence[int]], sample_ids: Sequence[int] | None = None, preview: bool = False,
                record: bool = False, hooks: Hooks = None, names_filter: NamesFilter = None,
                patches: Mapping[str, PatchValue] | None = None, to: str | None = None, **knobs) -> SamplerSession:
        """A steppable generation run with the registered hooks, then ``hooks`` for this call only
        (Callbacks, or ``{hook point: fn}``). A prompt is a text or a list of token ids (e.g. a chat template's).

        ``preview=True`` adds a greedy text of ``x0_pred`` to every step (decoded without the prefix
        context, by a separate decoder call that never touches the sampler's caches);
        ``record=True`` keeps every step in ``session.trajectory``. ``names_filter`` fills
        ``session.cache`` step by step and ``patches`` replace tensors, as in :meth:`run_with_cache`.
        """
        keep = None if names_filter is None else (lambda run: run.select(names_filter))
        return self._session(prompts, sample_ids, hooks, knobs, keep, patches, to, preview=preview, record=record)

    def generate(self, prompts: str | Sequence[str], sample_ids: Sequence[int] | None = None, hooks: Hooks = None,
                 **knobs) -> list[Generation]:
        """Texts and token ids, as ``cola_core.generate.generate`` (plus any hooks)."""
        return self.sampler(prompts, sample_ids, hooks=hooks, **knobs).result()

    def trajectory(self, prompts: str | Sequence[str], sample_ids: Sequence[int] | None = None,
                   preview: bool = False, hooks: Hooks = None, **knobs) -> Trajectory:
        """Generate and keep every step state of every block."""
        session = self.sampler(prompts, sample_ids, preview=preview, record=True, hooks=hooks, **knobs)
        session.result()
        return session.trajectory

    def run_with_cache(self, prompts: str | Sequence[str], names_filter: NamesFilter = None,
                       sample_ids: Sequence[int] | None = None, hooks: Hooks = None, to: str | None = None,
                       patches: Mapping[str, PatchValue] | None = None, **knobs
                       ) -> tuple[list[Generation], ActivationCache]:
        """Generate and return ``(generations, cache)``: tensors by stable dotted name, sampler-level
        (``block.3.step.7.v_uncond``) or inside the models (``block.3.step.7.dit.cond.layer.1.resid_post``;
        see :mod:`workbench.inside.names`).

        ``names_filter``: a name, a glob (``*`` one segment, ``**`` any), a list of them, or ``fn(name) -> bool``;
        None keeps the sampler's trajectory (every step field, ``z_init``, ``z_final``, ``token_ids``).
        Only matching tensors are copied, when they are produced (``to="cpu"`` moves them off the device);
        a filter that matches no name of the run is an error before any model call. ``patches`` replace
        tensors while the run goes (see :meth:`run_with_patches`).
        """
        keep = (lambda run: run.trajectory()) if names_filter is None else (lambda run: run.select(names_filter))
        session = self._session(prompts, sample_ids, hooks, knobs, keep, patches, to)
        generations = session.result()
        session.taps.warn_unused()
        return generations, session.cache

    def run_with_patches(self, prompts: str | Sequence[str], patches: Mapping[str, PatchValue],
                         sample_ids: Sequence[int] | None = None, hooks: Hooks = None, **knobs) -> list[Generation]:
        """Generate with named tensors replaced as they are produced: ``{name: tensor}`` (e.g. a cache
        from another run, :meth:`ActivationCache.subset`) or ``{name or glob: fn(x) -> x'}``. Shapes,
        names and the checkpoint are checked before any model call."""
        session = self._session(prompts, sample_ids, hooks, knobs, patches=patches)
        generations = session.result()
        session.taps.warn_unused()
        return generations

    def encode_with_cache(self, texts: str | Sequence[str], names_filter: NamesFilter = None, to: str | None = None,
                          patches: Mapping[str, PatchValue] | None = None, sample: bool = False,
                          seed: int | None = None) -> tuple[Latents, ActivationCache]:
        """:meth:`encode` with the encoder's points cached (``encode.layer.1.resid_post``; None = all).
        Texts are padded to the longest, so one encoder forward holds them all (cache rows = texts)."""
        texts = check_texts(texts)
        run = vae_names(self.model, len(texts), encode_latents=self._latent_width(texts))
        return self._vae_with_cache(run, names_filter, to, patches, lambda: self.encode(
            texts, pad_to="longest", sample=sample, seed=seed, batch_size=len(texts)))

    def decode_with_cache(self, latents: Latents, names_filter: NamesFilter = None, to: str | None = None,
                          patches: Mapping[str, PatchValue] | None = None) -> tuple[Decoded, ActivationCache]:
        """:meth:`decode` with the decoder's points cached (``decode.layer.0.attn.pattern``, ``decode.logits``)."""
        self.check_latents(latents)
        run = vae_names(self.model, len(latents), decode_latents=max(z.shape[0] for z in latents.z) * self.block_size)
        return self._vae_with_cache(run, names_filter, to, patches,
                                    lambda: self.decode(latents, batch_size=len(latents)))

    def roundtrip_with_cache(self, texts: str | Sequence[str], names_filter: NamesFilter = None,
                             to: str | None = None, patches: Mapping[str, PatchValue] | None = None
                             ) -> tuple[Roundtrip, ActivationCache]:
        """encode -> decode with ``encode.*`` and ``decode.*`` points cached (texts padded to the longest)."""
        texts = check_texts(texts)
        width = self._latent_width(texts)
        run = vae_names(self.model, len(texts), encode_latents=width, decode_latents=width)

        def roundtrip() -> Roundtrip:
            latents = self.encode(texts, pad_to="longest", batch_size=len(texts))
            decoded = self.decode(latents, batch_size=len(texts))
            return Roundtrip(latents, decoded, token_accuracy(latents, decoded))

        return self._vae_with_cache(run, names_filter, to, patches, roundtrip)

    # -- the plumbing of cached and patched calls ----------------------------------------------------------
    def _latent_width(self, texts: list[str]) -> int:
        """Latents per text when ``texts`` are padded to the longest."""
        return int(tokenize(self.model, texts, "longest").latent_lengths.max())

    def _vae_with_cache(self, run: RunNames, names_filter: NamesFilter, to: str | None,
                        patches: Mapping[str, PatchValue] | None, verb: Callable[[], object]):
        """Run a VAE verb under a listener for ``encode.*`` / ``decode.*`` (None keeps every point)."""
        keep = run.select("**" if names_filter is None else names_filter)
        taps = CallTaps.build(run, keep, patches, self.fingerprint, to)
        taps.scope = ""
        with tapping(taps):
            out = verb()
        return out, taps.cache

    def run_names(self, prompts: str | Sequence[str], sample_ids: Sequence[int] | None = None, **knobs) -> RunNames:
        """Every name (with its shape) that generating from ``prompts`` with ``knobs`` produces; no model runs.
        ``list(wb.run_names(p, steps=4))``, ``.shape(name)``, ``.select(filter)``."""
        return sampler_names(self.model, self._session(prompts, sample_ids, None, knobs).sampler)

    def _session(self, prompts: str | Sequence[str | Sequence[int]], sample_ids: Sequence[int] | None, hooks: Hooks, knobs: dict,
                 keep: Callable[[RunNames], set[str]] | None = None, patches: Mapping[str, PatchValue] | None = None,
                 to: str | None = None, **options) -> SamplerSession:
        """Knobs, hooks, prompts (context length included), names and patches checked before any model call;
        ``keep`` picks the names to cache from the run's names."""
        config = self.config(**knobs)
        table = self.registry.snapshot(hooks)
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for i, p in enumerate(prompts):   # "" is the unconditional prompt; token ids are used as given
            if not isinstance(p, str) and not (isinstance(p, Sequence) and all(type(t) is int for t in p)):
                raise WorkbenchError(f"prompt {i} is neither a string nor a list of token ids: {str(p)[:60]}")
        with as_workbench_error():
            sampler = BlockwiseSampler(self.model, prompts, config, sample_ids)
        session = SamplerSession(sampler, table, **options)
        if keep is not None or patches is not None:
            run = sampler_names(self.model, sampler)
            session.taps = CallTaps.build(run, set() if keep is None else keep(run), patches, self.fingerprint, to,
                                          run_facts(sampler))
        sampler.fast = not table and session.taps is None   # hooks and taps get the eager model calls
        return session

    # -- diagnostics and projections (thin delegations; see their modules) ---------------------------
    def diagnose(self, texts: str | Sequence[str], **options) -> Diagnosis:
        """Reconstruction vs compression vs prior fit (``workbench.diagnostics.diagnose``)."""
        return diagnose(self.model, texts, **options)

    def log_likelihood(self, texts: str | Sequence[str], **options) -> list[dict]:
        """Prior log-likelihood of the texts' latents via the probability-flow ODE, per text."""
        return text_log_likelihood(self.model, texts, **options)

    def data_norm(self, texts: Sequence[str] | None = None) -> float:
        """Mean latent norm of encoded texts (default: the bundled reference corpus), cached: the yardstick of
        the off-manifold monitor (``Trajectory.norm_records(wb.data_norm())``)."""
        return data_norm(self.model, texts)

    def display(self, token_ids: Sequence[int], stop_at_eos: bool = True) -> str:
        """Token ids as text for people: special tokens as markers (``⟨eos⟩``), cut after the first EOS / im_end."""
        return display_text(token_ids, self.tokenizer, stop_at_eos)

    def projection(self, texts: Sequence[str], method: str = "pca", n_components: int = 2, **options) -> Projection:
        """PCA/UMAP fitted on the texts' latents (cached on disk by checkpoint and corpus)."""
        return fit_projection(self.model, texts, method, n_components, **options)

    # -- hooks ---------------------------------------------------------------------------------------
    def hooks(self, *callbacks: Callback, **by_point: HookFn | Sequence[HookFn]
              ) -> contextlib.AbstractContextManager[list[HookHandle]]:
        """Scoped hooks: ``with wb.hooks(guidance_ramp(1, 7), post_update=fn): ...``; on exit exactly
        these registrations are removed, even after an exception. They apply to every call on this
        workbench, so a workbench shared between users (a server) passes ``hooks=`` per call instead."""
        return self.registry.scoped(*callbacks, **by_point)

    def add_hook(self, event: str, fn: HookFn) -> HookHandle:
        """Register a hook until ``handle.remove()`` (or :meth:`reset_hooks`)."""
        return self.registry.add(event, fn)

    def reset_hooks(self) -> None:
        self.registry.clear()


def sampler_names(model: ColaModel, sampler: BlockwiseSampler) -> RunNames:
    """The names a (not yet started) sampler's run will produce."""
    return generation_names(model, len(sampler.sample_ids), sampler.num_blocks, sampler.config.steps,
                            sampler_stages(sampler.config.solver), int(sampler.prepared.prefix_lengths.max()))


def run_facts(sampler: BlockwiseSampler) -> dict:
    """Where a cache came from: prompts, sample ids, knobs, blocks, context latents."""
    return {"prompts": list(sampler.prepared.texts), "sample_ids": list(sampler.sample_ids),
            "config": dict(sampler.config.__dict__), "num_blocks": sampler.num_blocks,
            "prefix_latents": sampler.prepared.prefix_lengths.tolist()}

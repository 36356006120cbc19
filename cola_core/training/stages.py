"""The training stages wired end to end: config -> data -> model -> Trainer -> release-layout export.

Stage 1 (``train_vae``) writes ``<out_dir>/cola_vae/`` + ``tokenizer.json`` with scaling/shifting factors
computed from posterior samples and folded into ``decoder.in_layer``. Stage 2 (``train_dit``) reads
that folder and writes the full release layout (``cola_dlm/cola_vae``, ``cola_dlm/cola_dit``,
``tokenizer.json``) with :func:`cola_core.checkpoint.save_pretrained`. Stage 3 (``train_sft``) fine-tunes
a checkpoint's DiT on conversations and writes the same layout with the chat template in the DiT config.
"""
from __future__ import annotations

import copy
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn as nn

from ..chat_template import ChatTemplate
from ..checkpoint import (DOCUMENT_START_KEY, ColaModel, load_module, load_pretrained, read_configs, save_model_folder,
                          save_pretrained)
from ..config import DiTConfig, VAEConfig, check_pair
from ..dit import ColaDiT
from ..errors import ConfigError
from ..pocket import resolve_checkpoint
from ..tokenizer import ColaTokenizer
from ..vae import ColaTextVAE, VAEBlock
from .config import DiTTrainConfig, SFTTrainConfig, VAETrainConfig
from .conversations import ConversationDataset, read_conversations
from .corpus import read_corpus
from .data import BatchOrder, TokenDataset, corpus_split_path, fixed_batches
from .objectives import dit_terms, latent_statistics, set_latent_scaling, vae_terms, word_start_ids
from .sft import block_size_choices, sft_terms
from .tokenizer_train import train_bpe_tokenizer
from .trainer import Dist, Trainer, claim_out_dir, claim_run_dir, setup_distributed

SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for linear/conv/embedding weights, zero biases, unit LayerNorm gains."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def grow_decoder(vae: ColaTextVAE, blocks: int) -> None:
    """Append fresh blocks to the VAE decoder up to ``blocks``, their attention and FFN output projections at zero.

    A zero-output post-norm block returns the layer norm of its input, which the decoder head's own norm all but
    absorbs, so the grown decoder starts with the trained one's predictions and the new depth is learned from there.
    """
    cfg, have = vae.config, vae.config.decoder_num_blocks
    if blocks < have:
        raise ConfigError(f"decoder_blocks {blocks} is fewer than the {have} blocks the loaded decoder has")
    ref = next(vae.decoder.parameters())
    for _ in range(blocks - have):
        block = VAEBlock(cfg).to(ref)
        init_weights(block, cfg.init_std)
        for out in (block.attn_out_proj, block.ffn_out):
            nn.init.zeros_(out.weight)
            nn.init.zeros_(out.bias)
        vae.decoder.blocks.append(block)
    cfg.decoder_num_blocks = blocks


def init_dit(dit: ColaDiT, std: float = 0.02) -> None:
    """adaLN-zero: gates and the output projection start at zero, so every block starts as identity."""
    init_weights(dit, std)
    for block in dit.blocks:
        for gate in (block.ada.msa_out[1], block.ada.mlp_out[1]):
            nn.init.zeros_(gate.weight)
            nn.init.zeros_(gate.bias)
    nn.init.zeros_(dit.txt_out.proj.weight)
    nn.init.zeros_(dit.txt_out.proj.bias)


def _prepare(cfg, resume: bool, overwrite: bool) -> Dist:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    env = setup_distributed(cfg.device)
    claim_run_dir(Path(cfg.run_dir), env, resume, overwrite)
    claim_out_dir(Path(cfg.out_dir), resume, overwrite)
    return env


def _vae_folder(path: Path) -> Path:
    return path / "cola_vae" if (path / "cola_vae").is_dir() else path


def save_vae(vae: ColaTextVAE, tokenizer: ColaTokenizer, out_dir: str | Path, dtype: torch.dtype) -> Path:
    """Stage-1 export: ``<out_dir>/cola_vae/{config.json, model.safetensors}`` + ``<out_dir>/tokenizer.json``."""
    out_dir = Path(out_dir)
    save_model_folder(copy.deepcopy(vae).to(dtype), vae.config, out_dir / "cola_vae", None)
    tokenizer.save(out_dir / "tokenizer.json")
    return out_dir


def load_vae(path: str | Path, device: torch.device) -> tuple[ColaTextVAE, ColaTokenizer]:
    """Load a stage-1 folder (or a full checkpoint root) as fp32 VAE + tokenizer."""
    root = Path(path)
    candidates = [root, root / "cola_dlm"]
    for base in candidates:
        if (base / "cola_vae" / "config.json").is_file():
            break
    else:
        raise FileNotFoundError(f"{root}: no cola_vae/config.json (train stage 1 first: cola-workbench train vae)")
    folder = base / "cola_vae"
    tok_path = next((p for p in (base / "tokenizer.json", root / "tokenizer.json") if p.is_file()), None)
    if tok_path is None:
        raise FileNotFoundError(f"{root}: no tokenizer.json next to cola_vae/")
    vcfg = VAEConfig.from_json(folder / "config.json")
    with torch.device("meta"):
        vae = ColaTextVAE(vcfg)
    load_module(vae, folder, device, torch.float32)
    return vae, ColaTokenizer.from_file(tok_path)


def _tokenizer_for(cfg: VAETrainConfig, env: Dist) -> ColaTokenizer:
    """Use cfg.tokenizer, training it on the train split first if the file does not exist."""
    path = Path(cfg.tokenizer) if cfg.tokenizer else Path(cfg.run_dir) / "tokenizer.json"
    if not path.is_file():
        if env.main:
            print(f"training a {cfg.vocab_size}-token BPE tokenizer -> {path}", file=sys.stderr)
            train_bpe_tokenizer(read_corpus(corpus_split_path(cfg.corpus, "train")), cfg.vocab_size, path)
        env.barrier()
    return ColaTokenizer.from_file(path)


def _datasets(cfg, tokenizer: ColaTokenizer, vcfg: VAEConfig, micro: int, extra_rows: Sequence[list[int]] = (),
              start_ids: Sequence[int] = (), start_share: float = 0.0) -> tuple[BatchOrder, list]:
    """Batches of the corpus's train split (plus ``extra_rows`` of token ids) and fixed validation batches; with
    ``start_ids``, a share ``start_share`` of each split's texts is preceded by them (:meth:`TokenDataset.precede`)."""
    train = TokenDataset.from_corpus(cfg.corpus, "train", tokenizer, cfg.max_tokens, vcfg.block_size, vcfg.patch_size)
    val = TokenDataset.from_corpus(cfg.corpus, "val", tokenizer, cfg.max_tokens, vcfg.block_size, vcfg.patch_size)
    if start_ids:
        train.precede(start_ids, start_share, cfg.seed)
        val.precede(start_ids, start_share, cfg.seed + 1)
    train.add_rows(extra_rows)
    order = BatchOrder(train, micro, cfg.seed, cfg.length_bucketing)
    return order, fixed_batches(val, micro, cfg.val_batches)


def rendered_dialogues(cfg: VAETrainConfig, tokenizer: ColaTokenizer) -> list[list[int]]:
    """The first ``dialogue_rows`` train conversations of ``cfg.dialogues`` as the chat model sees them."""
    _, chat_dit, _, chat_tokenizer = read_configs(resolve_checkpoint(cfg.dialogue_template))   # no weights needed
    if chat_tokenizer.vocab_size != tokenizer.vocab_size:
        raise ConfigError(f"dialogue_template {cfg.dialogue_template!r} has another tokenizer "
                          f"({chat_tokenizer.vocab_size} tokens, this VAE's has {tokenizer.vocab_size})")
    template = ChatTemplate.from_config(chat_dit.extra, chat_tokenizer)
    conversations = read_conversations(corpus_split_path(cfg.dialogues, "train"))[:cfg.dialogue_rows]
    return [template.render(tokenizer, messages).ids for messages in conversations]


def _param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# Stage 1
# ---------------------------------------------------------------------------------------------
def _new_vae(cfg: VAETrainConfig, tokenizer: ColaTokenizer) -> ColaTextVAE:
    """A freshly initialised VAE of the config's [model] shape, sized to the tokenizer."""
    model_fields = {"vocab_size": tokenizer.vocab_size, **cfg.model}
    vcfg = VAEConfig.from_dict(model_fields, source=f"[model] of the {cfg.stage} config")
    if vcfg.vocab_size < tokenizer.vocab_size:
        raise ConfigError(f"[model] vocab_size {vcfg.vocab_size} is smaller than the tokenizer's {tokenizer.vocab_size}")
    if vcfg.scaling_factor != 1.0 or vcfg.shifting_factor != 0.0:
        raise ConfigError("[model] scaling_factor/shifting_factor are computed after stage 1; leave them unset")
    vae = ColaTextVAE(vcfg)
    init_weights(vae, vcfg.init_std)
    return vae


def _decoder_prior(cfg: VAETrainConfig, vae: ColaTextVAE, device: torch.device) -> ColaDiT:
    """The frozen DiT of ``cfg.decoder_prior``, checked to model this VAE's latent space."""
    prior = load_pretrained(cfg.decoder_prior, device=device)
    if (prior.vae_config.latent_dim, prior.vae_config.block_size) != (vae.config.latent_dim, vae.config.block_size) \
            or (prior.vae_config.scaling_factor, prior.vae_config.shifting_factor) != \
            (vae.config.scaling_factor, vae.config.shifting_factor):
        raise ConfigError(f"decoder_prior {cfg.decoder_prior!r} models another latent space (latent_dim, block_size "
                          "or scaling factors differ from the VAE being tuned)")
    return prior.dit.eval().requires_grad_(False)


def train_vae(cfg: VAETrainConfig, resume: bool = False, overwrite: bool = False,
              allow_config_change: bool = False) -> dict[str, float]:
    """Train the Text VAE; export it with scaling/shifting factors to ``cfg.out_dir``.

    A run_dir holding a previous run needs ``resume`` (continue it) or ``overwrite`` (delete it);
    ``allow_config_change`` lets a resume continue under a config that differs from the saved one.
    """
    env = _prepare(cfg, resume, overwrite)
    if cfg.init_from:
        vae, tokenizer = load_vae(cfg.init_from, env.device)
        if cfg.decoder_blocks:
            grow_decoder(vae, cfg.decoder_blocks)
    else:
        tokenizer = _tokenizer_for(cfg, env)
        vae = _new_vae(cfg, tokenizer).to(env.device)
    vcfg = vae.config
    vae.encoder.requires_grad_(cfg.train_encoder)
    micro = cfg.batch_size // cfg.grad_accum
    order, val_batches = _datasets(cfg, tokenizer, vcfg, micro,
                                   rendered_dialogues(cfg, tokenizer) if cfg.dialogues else [])
    prior = _decoder_prior(cfg, vae, env.device) if cfg.decoder_prior else None
    terms = functools.partial(vae_terms, vae, pad_id=tokenizer.pad_id, prefix_prob=cfg.prefix_prob,
                              mask_prob=cfg.mask_prob, mask_seq_prob=cfg.mask_seq_prob,
                              decoder_noise=cfg.decoder_noise, decoder_noise_prob=cfg.decoder_noise_prob,
                              prior=prior, prior_prob=cfg.decoder_prior_prob, prior_t_max=cfg.decoder_prior_t_max,
                              decoder_swap=cfg.decoder_swap, decoder_swap_prob=cfg.decoder_swap_prob,
                              decoder_swap_noised=cfg.decoder_swap_noised)

    def export(step: int) -> None:
        final = copy.deepcopy(vae).eval()
        if cfg.train_encoder:   # a frozen encoder keeps its latent statistics, so its factors stay exact
            gen = torch.Generator(env.device).manual_seed(cfg.seed)
            stats_batches = [order.batch(k).to(env.device) for k in range(cfg.stats_batches)]
            mean, std = latent_statistics(final, stats_batches, gen)
            set_latent_scaling(final, shift=mean, scale=1.0 / std)
        final.config.extra.update(pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id)
        save_vae(final, tokenizer, cfg.out_dir, SAVE_DTYPES[cfg.save_dtype])
        _write_summary(cfg, step, {"vae_params": _param_count(vae), "scaling_factor": final.config.scaling_factor,
                                   "shifting_factor": final.config.shifting_factor})

    if env.main:
        print(f"VAE: {_param_count(vae) / 1e6:.2f}M params, {len(order.dataset)} train texts, "
              f"{order.per_epoch} batches/epoch", file=sys.stderr)
    trainer = Trainer(cfg, env, {"vae": vae}, [{"params": [p for p in vae.parameters() if p.requires_grad]}], terms,
                      {"recon": 1.0, "kl": cfg.beta, "mask": cfg.mask_weight}, order, val_batches, export)
    return trainer.fit(resume, allow_config_change)


# ---------------------------------------------------------------------------------------------
# Stage 2
# ---------------------------------------------------------------------------------------------
def train_dit(cfg: DiTTrainConfig, resume: bool = False, overwrite: bool = False,
              allow_config_change: bool = False) -> dict[str, float]:
    """Train the DiT prior on a stage-1 VAE (frozen unless joint_vae), or continue a checkpoint's DiT on its own
    VAE (``init_from``); export the release layout.

    ``resume``, ``overwrite`` and ``allow_config_change`` as for :func:`train_vae`.
    """
    env = _prepare(cfg, resume, overwrite)
    if cfg.init_from:
        base = load_pretrained(cfg.init_from, device=env.device)
        vae, tokenizer, dit = base.vae, base.tokenizer, base.dit.train().requires_grad_(True)
    else:
        vae, tokenizer = load_vae(cfg.vae, env.device)
        dit = _new_dit(cfg, vae.config).to(env.device)
    vcfg, dcfg = vae.config, dit.config
    modules: dict[str, nn.Module] = {"dit": dit}
    groups = [{"params": list(dit.parameters())}]
    ref_vae = None
    if cfg.joint_vae:
        ref_vae = copy.deepcopy(vae).eval().requires_grad_(False)
        modules["vae"] = vae
        groups.append({"params": list(vae.parameters()), "lr": cfg.vae_lr})
    else:
        vae.eval().requires_grad_(False)
    micro = cfg.batch_size // cfg.grad_accum
    start_ids = document_start_tokens(cfg, tokenizer, dcfg.block_size * vcfg.patch_size)
    order, val_batches = _datasets(cfg, tokenizer, vcfg, micro, start_ids=start_ids,
                                   start_share=cfg.document_start_share)
    terms = functools.partial(dit_terms, dit, vae, t_sampling=cfg.t_sampling, t_loc=cfg.t_loc, t_scale=cfg.t_scale,
                              prompt_block_prob=cfg.prompt_block_prob, posterior_mean=cfg.posterior_mean,
                              first_block_weight=cfg.first_block_weight, crop_start_prob=cfg.crop_start_prob,
                              word_start=word_start_ids(tokenizer) if cfg.crop_start_prob else None,
                              pad_id=tokenizer.pad_id,
                              ref_vae=ref_vae, prompt_pad_id=tokenizer.pad_id if cfg.prompt_as_generated else None)
    weights = {"fm": 1.0, "recon": cfg.lambda_vae, "kl_ref": cfg.lambda_ref}

    def export(step: int) -> None:
        dcfg.extra.update(pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id)
        if start_ids:
            dcfg.extra[DOCUMENT_START_KEY] = start_ids
        _save_release(cfg, vae, dit, tokenizer)
        _write_summary(cfg, step, {"dit_params": _param_count(dit), "vae_params": _param_count(vae)})

    if env.main:
        print(f"DiT: {_param_count(dit) / 1e6:.2f}M params on a {_param_count(vae) / 1e6:.2f}M-param VAE "
              f"({'joint' if cfg.joint_vae else 'frozen'}), {len(order.dataset)} train texts, "
              f"{order.per_epoch} batches/epoch", file=sys.stderr)
    trainer = Trainer(cfg, env, modules, groups, terms, weights, order, val_batches, export, ema_module="dit")
    return trainer.fit(resume, allow_config_change)


def document_start_tokens(cfg: DiTTrainConfig, tokenizer: ColaTokenizer, chunk: int) -> list[int]:
    """The ids of ``cfg.document_start`` (none when unset): whole blocks of ``chunk`` tokens without a stop token,
    so a prompt that starts with them keeps a prefix of its own and its text starts a fresh block."""
    if not cfg.document_start:
        return []
    ids = tokenizer.encode(cfg.document_start)
    if not ids or len(ids) % chunk or set(ids) & (tokenizer.stop_ids | {tokenizer.pad_id}):
        raise ConfigError(f"document_start {cfg.document_start!r} is {len(ids)} tokens {ids}; it must fill whole "
                          f"blocks of {chunk} tokens and hold no stop or pad token")
    return ids


def _new_dit(cfg: DiTTrainConfig, vcfg: VAEConfig) -> ColaDiT:
    """A freshly initialised DiT of the config's [model] shape on the VAE's latents."""
    model_fields = {"txt_in_channels": vcfg.latent_dim, "txt_out_channels": vcfg.latent_dim,
                    "block_size": vcfg.block_size, **cfg.model}
    dcfg = DiTConfig.from_dict(model_fields, source=f"[model] of the {cfg.stage} config")
    check_pair(vcfg, dcfg)
    dit = ColaDiT(dcfg)
    init_dit(dit)
    return dit


def _save_release(cfg, vae: ColaTextVAE, dit: ColaDiT, tokenizer: ColaTokenizer) -> None:
    """Write the release layout (both models in ``cfg.save_dtype``, RoPE frequencies kept exact) to out_dir."""
    dtype = SAVE_DTYPES[cfg.save_dtype]
    out_vae, out_dit = copy.deepcopy(vae).to(dtype), copy.deepcopy(dit).to(dtype)
    for block in out_dit.blocks:
        block.msa.rope.rope.freqs = block.msa.rope.rope.freqs.float()
    model = ColaModel(vae=out_vae, dit=out_dit, tokenizer=tokenizer, vae_config=vae.config, dit_config=dit.config,
                      device=torch.device("cpu"), dtype=dtype)
    save_pretrained(model, cfg.out_dir)


# ---------------------------------------------------------------------------------------------
# Stage 3: SFT
# ---------------------------------------------------------------------------------------------
def chat_template_for(cfg: SFTTrainConfig, tokenizer: ColaTokenizer) -> ChatTemplate:
    """The template an SFT config trains: chatml stops at <|im_end|>, text at ``stop_token`` (one token)."""
    if cfg.chat_format == "chatml":
        if not tokenizer.has_chat_tokens:
            raise ConfigError(f"chat_format 'chatml' needs a tokenizer with <|im_start|> and <|im_end|> ({cfg.init_from})")
        return ChatTemplate("chatml", tokenizer.im_end_id, cfg.pad_with_stop)
    if not cfg.stop_token:
        return ChatTemplate("text", tokenizer.eos_id, cfg.pad_with_stop)
    stop_ids = tokenizer.encode(cfg.stop_token)             # byte-level BPE: "■" is one token, not one vocab key
    if len(stop_ids) != 1:
        raise ConfigError(f"stop_token {cfg.stop_token!r} is not a single token of the tokenizer of {cfg.init_from} "
                          f"(it encodes to {len(stop_ids)} tokens)")
    return ChatTemplate("text", stop_ids[0], cfg.pad_with_stop)


def train_sft(cfg: SFTTrainConfig, resume: bool = False, overwrite: bool = False,
              allow_config_change: bool = False) -> dict[str, float]:
    """Fine-tune a checkpoint's DiT on conversations (VAE frozen); export it with the ``sft_*`` config fields.

    ``resume``, ``overwrite`` and ``allow_config_change`` as for :func:`train_vae`.
    """
    env = _prepare(cfg, resume, overwrite)
    base = load_pretrained(cfg.init_from, device=env.device)
    vae, dit, tokenizer = base.vae, base.dit, base.tokenizer
    if vae.config.patch_size != 1:
        raise ConfigError(f"{cfg.init_from}: SFT needs patch_size 1 (one token per latent), got {vae.config.patch_size}")
    choices = block_size_choices(dit.config.block_size)
    if cfg.block_size_probs and len(cfg.block_size_probs) != len(choices):
        raise ConfigError(f"block_size_probs needs {len(choices)} weights, for block sizes {choices}; "
                          f"got {cfg.block_size_probs}")
    template = chat_template_for(cfg, tokenizer)
    vae.eval().requires_grad_(False)
    dit.train().requires_grad_(True)
    micro = cfg.batch_size // cfg.grad_accum
    shape = (dit.config.block_size, vae.config.patch_size)
    train = ConversationDataset.from_corpus(cfg.corpus, "train", tokenizer, template, cfg.max_tokens, *shape)
    val = ConversationDataset.from_corpus(cfg.corpus, "val", tokenizer, template, cfg.max_tokens, *shape)
    order = BatchOrder(train, micro, cfg.seed, cfg.length_bucketing)
    terms = functools.partial(sft_terms, dit, vae, t_sampling=cfg.t_sampling, t_loc=cfg.t_loc, t_scale=cfg.t_scale,
                              posterior_mean=cfg.posterior_mean, loss_mode=cfg.loss_mode,
                              boundary_mode=cfg.boundary_mode, block_size_probs=cfg.block_size_probs)

    def export(step: int) -> None:
        dit.config.extra.update(pad_token_id=tokenizer.pad_id, eos_token_id=tokenizer.eos_id,
                                **template.config_fields())
        _save_release(cfg, vae, dit, tokenizer)
        _write_summary(cfg, step, {"dit_params": _param_count(dit), "conversations": len(train),
                                   **template.config_fields()})

    if env.main:
        print(f"SFT: {_param_count(dit) / 1e6:.2f}M-param DiT of {cfg.init_from}, {template.format} format, "
              f"{len(train)} train conversations, {order.per_epoch} batches/epoch", file=sys.stderr)
    trainer = Trainer(cfg, env, {"dit": dit}, [{"params": list(dit.parameters())}], terms, {"fm": 1.0}, order,
                      fixed_batches(val, micro, cfg.val_batches), export, ema_module="dit")
    return trainer.fit(resume, allow_config_change)


def _write_summary(cfg, step: int, extra: dict) -> None:
    """run_dir/summary.json: steps done, wall time is in metrics.jsonl; sizes for the model card."""
    path = Path(cfg.run_dir) / "summary.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"stage": cfg.stage, "steps": step, "out_dir": cfg.out_dir, **extra}, indent=1) + "\n")

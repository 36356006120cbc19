"""2-D/3-D maps of latent space: PCA or UMAP fitted on a reference cloud of encoder latents.

The reference cloud is every DiT-space posterior mean that covers a real token of a corpus. A
fitted projection is cached on disk (safetensors + JSON, never pickle) under a key made of the
checkpoint fingerprint, a hash of the corpus and the method's parameters.

PCA maps new points exactly (``(x - mean) @ components.T``). A fitted UMAP object cannot be
stored safely, so the cache keeps the reference latents and their UMAP coordinates, and
``transform`` places a new point at the inverse-distance-weighted mean of the coordinates of its
``n_neighbors`` nearest reference latents (the starting point UMAP's own ``transform`` uses).
Points far from the data (early noisy trajectory steps) land near their nearest reference
points either way; use PCA when distances off the data manifold matter.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from cola_core import ColaModel
from cola_core.text_codec import encode_tokens

from .errors import WorkbenchError
from .io import load_bundle, save_bundle
from .textbatch import batches, check_texts, tokenize

METHODS = ("pca", "umap")
FORMAT_VERSION = 1
UMAP_DEFAULTS = {"n_neighbors": 15, "min_dist": 0.1, "metric": "euclidean", "random_state": 0}
UMAP_INSTALL = "pip install 'umap-learn>=0.5'"


def default_cache_dir() -> Path:
    """``$COLA_WORKBENCH_CACHE/projections`` or ``~/.cache/cola_workbench/projections``."""
    root = os.environ.get("COLA_WORKBENCH_CACHE") or Path.home() / ".cache" / "cola_workbench"
    return Path(root) / "projections"


def corpus_hash(texts: Sequence[str]) -> str:
    """Order-sensitive SHA-256 of the texts (16 hex digits)."""
    digest = hashlib.sha256()
    for text in texts:
        encoded = text.encode("utf-8")
        digest.update(len(encoded).to_bytes(8, "little") + encoded)
    return digest.hexdigest()[:16]


@torch.no_grad()
def reference_cloud(model: ColaModel, texts: Sequence[str], batch_size: int = 32) -> torch.Tensor:
    """(N, C) fp32 DiT-space posterior means of every latent that covers a real token."""
    texts = check_texts(texts)
    points = []
    for _, chunk in batches(texts, batch_size):
        batch = tokenize(model, chunk)
        post = encode_tokens(model, batch)
        points.append(model.vae.to_dit_space(post.mean)[batch.real_latents].cpu())
    return torch.cat(points)


def pca(points: torch.Tensor, n_components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """points (N, C) -> (mean (C,), components (k, C) orthonormal, explained variance (k,)); sign-fixed."""
    x = points.double()
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    comps = vh[:n_components]
    signs = torch.sign(comps[torch.arange(len(comps)), comps.abs().argmax(1)])   # largest entry positive
    return mean.float(), (comps * signs[:, None]).float(), (s[:n_components] ** 2 / (len(x) - 1)).float()


@dataclass
class Projection:
    """A fitted map from DiT-space latents (..., C) to (..., k) coordinates."""

    method: str
    n_components: int
    reference: torch.Tensor            # (N, C) reference latents
    coords: torch.Tensor               # (N, k) their coordinates
    mean: torch.Tensor | None = None   # PCA only
    components: torch.Tensor | None = None
    explained_variance: torch.Tensor | None = None
    params: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def explained_variance_ratio(self) -> torch.Tensor | None:
        """(k,) share of the reference cloud's total variance per PCA component."""
        if self.explained_variance is None:
            return None
        total = self.reference.double().var(0, unbiased=True).sum()
        return (self.explained_variance.double() / total).float()

    def transform(self, points: torch.Tensor) -> torch.Tensor:
        """(..., C) latents (trajectories, edits, interpolations) -> (..., k) coordinates."""
        points = torch.as_tensor(points).detach().float().cpu()
        channels = self.reference.shape[1]
        if points.shape[-1] != channels:
            raise WorkbenchError(f"points have {points.shape[-1]} channels; this projection maps {channels}")
        if not bool(torch.isfinite(points).all()):
            raise WorkbenchError("points contain NaN or infinite values")
        flat = points.reshape(-1, channels)
        if self.method == "pca":
            out = (flat - self.mean) @ self.components.T
        else:
            out = _knn_interpolate(flat, self.reference, self.coords, int(self.params["n_neighbors"]))
        return out.reshape(*points.shape[:-1], self.n_components)

    def figure(self, overlays: Mapping[str, torch.Tensor] | None = None, height: int = 520, title: str | None = None):
        """Plotly scatter of the reference cloud with overlays drawn as lines with markers.

        ``overlays`` maps a name to latents (M, C) (one path) or (P, M, C) (P paths).
        """
        import plotly.graph_objects as go

        if self.n_components < 2:
            raise WorkbenchError("figure needs a projection with at least 2 components")
        fig = go.Figure(go.Scattergl(x=self.coords[:, 0].tolist(), y=self.coords[:, 1].tolist(), mode="markers",
                                     marker=dict(size=4, color="#b0b0b0", opacity=0.6), name="reference"))
        for name, latents in (overlays or {}).items():
            xy = self.transform(latents)
            paths = xy[None] if xy.dim() == 2 else xy.reshape(-1, xy.shape[-2], xy.shape[-1])
            for i, path in enumerate(paths):
                fig.add_trace(go.Scatter(x=path[:, 0].tolist(), y=path[:, 1].tolist(), mode="lines+markers",
                                         name=name if len(paths) == 1 else f"{name}[{i}]"))
        fig.update_layout(height=height, title=title or f"{self.method.upper()} of {len(self.reference)} latents",
                          xaxis_title=f"{self.method} 1", yaxis_title=f"{self.method} 2")
        return fig

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``path.safetensors`` + ``path.json`` atomically."""
        tensors = {"reference": self.reference, "coords": self.coords}
        for name in ("mean", "components", "explained_variance"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name)
        meta = {"kind": "projection", "format_version": FORMAT_VERSION, "method": self.method,
                "n_components": self.n_components, "params": self.params, **self.meta}
        return save_bundle(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> "Projection":
        tensors, meta = load_bundle(path, "projection")
        if meta.get("format_version") != FORMAT_VERSION:
            raise WorkbenchError(f"{path}: projection format {meta.get('format_version')}, expected {FORMAT_VERSION}")
        extra = {k: v for k, v in meta.items()
                 if k not in ("kind", "format_version", "method", "n_components", "params")}
        return cls(method=meta["method"], n_components=meta["n_components"], reference=tensors["reference"],
                   coords=tensors["coords"], mean=tensors.get("mean"), components=tensors.get("components"),
                   explained_variance=tensors.get("explained_variance"), params=meta["params"], meta=extra)


def _knn_interpolate(points: torch.Tensor, reference: torch.Tensor, coords: torch.Tensor, k: int) -> torch.Tensor:
    """Inverse-distance-weighted mean of the coordinates of each point's k nearest reference latents."""
    k = min(k, len(reference))
    out = []
    for chunk in points.split(4096):
        dist, idx = torch.cdist(chunk.double(), reference.double()).topk(k, largest=False)
        weights = 1.0 / dist.clamp_min(1e-12)
        weights = weights / weights.sum(1, keepdim=True)
        out.append((weights[..., None] * coords.double()[idx]).sum(1).float())
    return torch.cat(out)


def _check_method(method: str, params: Mapping) -> dict:
    """Validate a method and its parameters (UMAP defaults filled in) before any work starts."""
    if method not in METHODS:
        raise WorkbenchError(f"unknown projection method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "pca":
        if params:
            raise WorkbenchError(f"PCA takes no parameters, got {', '.join(sorted(params))}")
        return {}
    unknown = set(params) - set(UMAP_DEFAULTS)
    if unknown:
        raise WorkbenchError(f"unknown UMAP parameter(s): {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(UMAP_DEFAULTS)}")
    _import_umap()
    return {**UMAP_DEFAULTS, **params}


def _import_umap():
    try:
        import umap  # noqa: PLC0415 (optional dependency)
    except ImportError:
        raise WorkbenchError(f"UMAP projections need the optional package umap-learn: {UMAP_INSTALL}") from None
    return umap


def fit_points(points: torch.Tensor, method: str = "pca", n_components: int = 2, **params) -> Projection:
    """Fit a projection on given reference latents (N, C) (no model, no cache)."""
    params = _check_method(method, params)
    points = torch.as_tensor(points).detach().float().cpu()
    if points.dim() != 2 or len(points) < 2:
        raise WorkbenchError(f"reference points must be (N >= 2, C), got shape {tuple(points.shape)}")
    if not 1 <= n_components <= points.shape[1]:
        raise WorkbenchError(f"n_components must be in [1, {points.shape[1]}], got {n_components}")
    if method == "pca":
        mean, comps, var = pca(points, n_components)
        return Projection("pca", n_components, points, (points - mean) @ comps.T, mean, comps, var)
    reducer = _import_umap().UMAP(n_components=n_components, **params)
    coords = torch.as_tensor(reducer.fit_transform(points.numpy())).float()
    return Projection("umap", n_components, points, coords, params=params)


def fit_projection(model: ColaModel, texts: Sequence[str], method: str = "pca", n_components: int = 2, *,
                   cache_dir: str | Path | None = None, refresh: bool = False, batch_size: int = 32,
                   **params) -> Projection:
    """Fit (or load from the cache) a projection of ``texts``' latents for ``model``.

    The cache key covers the checkpoint fingerprint, the corpus hash, method, n_components and
    ``params`` (UMAP: n_neighbors, min_dist, metric, random_state). ``refresh`` refits.
    """
    texts = check_texts(texts)
    params = _check_method(method, params)   # fail before encoding anything
    if not 1 <= n_components <= model.vae_config.latent_dim:
        raise WorkbenchError(f"n_components must be in [1, {model.vae_config.latent_dim}], got {n_components}")
    identity = {"format_version": FORMAT_VERSION, "checkpoint": model.fingerprint, "corpus": corpus_hash(texts),
                "method": method, "n_components": n_components, "params": params}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = path / f"{method}-{key}"
    if not refresh and path.with_name(path.name + ".json").is_file():
        return Projection.load(path)
    proj = fit_points(reference_cloud(model, texts, batch_size), method, n_components, **params)
    proj.meta = {"checkpoint": model.fingerprint, "corpus_hash": identity["corpus"], "texts": len(texts),
                 "cache_key": key}
    proj.save(path)
    return proj

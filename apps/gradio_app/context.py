"""What every tab shares: the loaded workbench, the projection backdrop, the run store and the limits.

Only immutable things are shared between users: one workbench (its model's modules are only read,
and the app never registers a hook on it), fitted projections and limits. Each request builds its
own sampler and passes its hooks per call (``wb.sampler(..., hooks=...)``), so no sampler state,
hook or KV cache is shared.

Everything the app writes lives in one private folder inside Gradio's file cache (so download files
are served where they are, never copied), bounded by :class:`Limits` and removed by :meth:`AppContext.close`.
"""
from __future__ import annotations

import importlib.util
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from gradio.utils import get_upload_folder

from cola_core.training.corpus import read_corpus
from workbench import Workbench
from workbench.projection import Projection

from .store import RunStore, StopFlags

BACKDROP_FILE = Path(__file__).with_name("backdrop.txt")
METHODS = ("auto", "PCA", "UMAP")
BENCH_ROOTS = ("runs", "artifacts")   # under the working directory: where the Bench tab may read; serve adds more


def bench_roots(extra: Sequence[str | Path] = ()) -> tuple[Path, ...]:
    """The folders whose bench outputs the app may read: ``runs/`` and ``artifacts/`` of the working
    directory plus ``extra`` (``serve --bench-root``), resolved (symlinks followed) once at start-up."""
    return tuple(dict.fromkeys(Path(root).resolve() for root in [*(Path.cwd() / r for r in BENCH_ROOTS), *extra]))


@dataclass(frozen=True)
class Limits:
    """Bounds on what one request may ask for (the UI sliders use the same numbers) and on what the
    server keeps."""

    max_upload_bytes: int = 1 << 20      # uploaded .txt/.jsonl for diagnostics
    max_texts: int = 200                 # texts per diagnostics request
    max_text_chars: int = 2000           # characters per text
    max_prompt_chars: int = 32_000       # the Trajectories prompt (a bench item's few-shot prompt runs to ~4k)
    max_steps: int = 200
    max_new_tokens: int = 512
    max_guidance: float = 30.0
    max_grid_cells: int = 64             # guidance lab: X values x Y values
    max_prompts: int = 16
    backdrop_texts: int = 2000           # corpus texts encoded for the projection backdrop
    backdrop_points: int = 3000          # backdrop points drawn in a figure
    run_ttl_s: float = 3600.0            # a stored run (and its downloads) expires this long after its last use
    max_runs: int = 256                  # stored runs, oldest evicted first
    max_store_bytes: int = 1 << 30       # download files of all stored runs together
    max_cache_bytes: int = 256 << 20     # files Gradio keeps for this app (uploads)


class Projections:
    """PCA fitted now; UMAP (optional umap-learn) fitted in a background thread started here."""

    def __init__(self, wb: Workbench, texts: Sequence[str], cache_dir: Path | None, umap: bool = True):
        self.dims = min(3, wb.channels)
        self.pca: Projection = wb.projection(texts, "pca", self.dims, cache_dir=cache_dir)
        self.umap: dict[int, Projection] = {}
        self._lock = threading.Lock()
        if not umap:
            self.umap_state = "off"
        elif importlib.util.find_spec("umap") is None:
            self.umap_state = "not installed"
        else:
            self.umap_state = "fitting"
            self.thread = threading.Thread(target=self._fit_umap, args=(wb, list(texts), cache_dir),
                                           name="umap-warmup", daemon=True)
            self.thread.start()

    def _fit_umap(self, wb: Workbench, texts: list[str], cache_dir: Path | None) -> None:
        try:
            for dims in sorted({2, self.dims}):
                proj = wb.projection(texts, "umap", dims, cache_dir=cache_dir)
                with self._lock:
                    self.umap[dims] = proj
            self.umap_state = "ready"
        except Exception as exc:   # a failed optional fit must not take the app down
            self.umap_state = f"failed ({type(exc).__name__}: {exc})"

    @property
    def choices(self) -> list[str]:
        return list(METHODS) if self.umap_state in ("fitting", "ready") else ["auto", "PCA"]

    def describe(self) -> str:
        """One line for the status bar."""
        pca = f"PCA on {len(self.pca.reference)} corpus latents"
        if self.umap_state == "ready":
            return pca + "; UMAP ready (auto uses UMAP)"
        if self.umap_state == "fitting":
            return pca + "; UMAP fitting in the background (auto uses PCA until it is ready)"
        if self.umap_state == "not installed":
            return pca + "; PCA only: UMAP needs the optional package umap-learn"
        return pca + f"; UMAP {self.umap_state}"

    def get(self, method: str, dims: int) -> tuple[Projection, str]:
        """(projection, note) for "auto"/"PCA"/"UMAP" in 2 or 3 dimensions; falls back to PCA with a note."""
        dims = min(dims, self.dims)
        if method not in METHODS:
            raise ValueError(f"unknown projection method {method!r}; choose one of {', '.join(METHODS)}")
        with self._lock:
            umap = self.umap.get(dims) if dims == 2 else self.umap.get(self.dims)
        if method in ("auto", "UMAP") and umap is not None:
            return umap, ""
        if method == "UMAP":
            return self.pca, f"UMAP is {self.umap_state}; showing PCA"
        return self.pca, ""


def load_backdrop(path: str | Path | None, limit: int) -> list[str]:
    """Corpus texts for the projection backdrop: ``path`` (.txt/.jsonl) or the bundled sample, evenly thinned."""
    texts = read_corpus(Path(path) if path is not None else BACKDROP_FILE)
    if len(texts) > limit:
        stride = len(texts) / limit
        texts = [texts[int(i * stride)] for i in range(limit)]
    return texts


@dataclass
class AppContext:
    """The state one server holds. Build it with :meth:`create`."""

    workbench: Workbench
    projections: Projections
    store: RunStore
    stops: StopFlags
    limits: Limits
    concurrency: int = 2
    backdrop_source: str = "bundled sample"
    bench_roots: tuple[Path, ...] = ()    # the Bench tab reads output folders under these only

    @classmethod
    def create(cls, checkpoint: str | Path | None = None, device: str | None = None, dtype: str | None = None,
               corpus: str | Path | None = None, limits: Limits | None = None, umap: bool = True,
               cache_dir: str | Path | None = None, concurrency: int = 2,
               workbench: Workbench | None = None, bench_root: Sequence[str | Path] = ()) -> "AppContext":
        """Load the checkpoint (or take ``workbench``), fit PCA on the backdrop, start the UMAP warm-up;
        ``bench_root``: folders the Bench tab may read besides ``runs/`` and ``artifacts/``."""
        limits = limits or Limits()
        wb = workbench or Workbench.load(checkpoint, device=device, dtype=dtype)
        texts = load_backdrop(corpus, limits.backdrop_texts)
        cache = Path(cache_dir) if cache_dir is not None else None
        projections = Projections(wb, texts, cache, umap=umap)
        files = Path(get_upload_folder())
        files.mkdir(parents=True, exist_ok=True)
        store = RunStore(Path(tempfile.mkdtemp(prefix="cola-workbench-", dir=files)), ttl_s=limits.run_ttl_s,
                         max_entries=limits.max_runs, max_bytes=limits.max_store_bytes)
        return cls(workbench=wb, projections=projections, store=store, stops=StopFlags(), limits=limits,
                   concurrency=concurrency, backdrop_source=str(corpus) if corpus is not None else "bundled sample",
                   bench_roots=bench_roots(bench_root))

    def close(self) -> None:
        """Remove everything the app wrote (its run store); the server calls this on shutdown."""
        self.store.close()

    @property
    def model(self):
        return self.workbench.model

    def status(self) -> dict:
        """Facts for the status bar."""
        model = self.model
        params = sum(p.numel() for p in model.vae.parameters()) + sum(p.numel() for p in model.dit.parameters())
        return {"checkpoint": str(model.source), "fingerprint": model.fingerprint, "device": str(model.device),
                "dtype": str(model.dtype).replace("torch.", ""), "parameters": params,
                "block_size": model.block_size, "patch_size": model.patch_size,
                "latent_dim": model.vae_config.latent_dim, "projection": self.projections.describe(),
                "umap": self.projections.umap_state, "backdrop": self.backdrop_source,
                "concurrency": self.concurrency, "runs_stored": len(self.store),
                "store_mib": round(self.store.nbytes() / 2**20, 1),
                "torch_threads": torch.get_num_threads()}

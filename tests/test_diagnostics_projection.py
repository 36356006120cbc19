"""Projections: PCA against an eigendecomposition, the on-disk cache, kNN transforms, optional UMAP."""
from __future__ import annotations

import sys

import pytest
import torch

import workbench.projection as projection
from workbench.errors import WorkbenchError
from workbench.projection import Projection, corpus_hash, fit_points, fit_projection, pca, reference_cloud

CORPUS = ["The cat sat on the mat.", "A river ran across the hill under the sun", "tea",
          "The candle counted the sun across the river and the hill.", "the sun and the hill."]


def test_pca_matches_the_covariance_eigendecomposition():
    gen = torch.Generator().manual_seed(0)
    points = torch.randn(300, 6, generator=gen) @ torch.randn(6, 6, generator=gen) + 3.0
    mean, comps, var = pca(points, 3)
    cov = torch.cov(points.double().T)
    evals, evecs = torch.linalg.eigh(cov)
    assert torch.allclose(var.double(), evals.flip(0)[:3], rtol=1e-4)
    assert torch.allclose(comps @ comps.T, torch.eye(3), atol=1e-5)
    for k in range(3):   # same axes up to sign
        assert abs(float(comps[k].double() @ evecs[:, -1 - k])) == pytest.approx(1.0, abs=1e-4)
    proj = fit_points(points, "pca", 3)
    coords = proj.transform(points)
    assert torch.allclose(coords.var(0).double(), var.double(), rtol=1e-4)
    assert torch.allclose(proj.coords, coords, atol=1e-5)
    ratio = proj.explained_variance_ratio
    assert torch.allclose(ratio.double(), evals.flip(0)[:3] / evals.sum(), rtol=1e-4)


def test_transform_keeps_leading_shape_and_checks_input():
    proj = fit_points(torch.randn(50, 4, generator=torch.Generator().manual_seed(1)), "pca", 2)
    assert proj.transform(torch.randn(3, 7, 4)).shape == (3, 7, 2)
    with pytest.raises(WorkbenchError, match="channels"):
        proj.transform(torch.randn(5, 3))
    with pytest.raises(WorkbenchError, match="NaN"):
        proj.transform(torch.full((2, 4), float("nan")))


def test_reference_cloud_holds_one_latent_per_covered_token(tiny_model):
    cloud = reference_cloud(tiny_model, CORPUS, batch_size=2)
    tokens = sum(len(tiny_model.tokenizer.encode(t)) for t in CORPUS)   # patch_size 1: one latent per token
    assert cloud.shape == (tokens, tiny_model.vae_config.latent_dim)


def test_fit_projection_is_cached_on_disk(tiny_model, tmp_path, monkeypatch):
    first = fit_projection(tiny_model, CORPUS, "pca", 2, cache_dir=tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")
    assert first.meta["checkpoint"] == tiny_model.fingerprint and first.meta["corpus_hash"] == corpus_hash(CORPUS)

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(projection, "reference_cloud", fail)
    again = fit_projection(tiny_model, CORPUS, "pca", 2, cache_dir=tmp_path)
    assert torch.equal(again.coords, first.coords) and torch.equal(again.components, first.components)
    points = torch.randn(4, tiny_model.vae_config.latent_dim)
    assert torch.allclose(again.transform(points), first.transform(points), atol=1e-6)
    with pytest.raises(AssertionError, match="cache"):          # other parameters or corpus: another key
        fit_projection(tiny_model, CORPUS, "pca", 3, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="cache"):
        fit_projection(tiny_model, CORPUS[:-1], "pca", 2, cache_dir=tmp_path)
    with pytest.raises(AssertionError, match="cache"):
        fit_projection(tiny_model, CORPUS, "pca", 2, cache_dir=tmp_path, refresh=True)


def test_corpus_hash_is_order_and_boundary_sensitive():
    assert corpus_hash(["ab", "c"]) != corpus_hash(["a", "bc"])
    assert corpus_hash(["a", "b"]) != corpus_hash(["b", "a"])
    assert corpus_hash(["a", "b"]) == corpus_hash(["a", "b"])


def test_knn_transform_reproduces_reference_coordinates(tmp_path):
    gen = torch.Generator().manual_seed(3)
    reference = torch.randn(40, 5, generator=gen)
    coords = torch.randn(40, 2, generator=gen)
    proj = Projection("umap", 2, reference, coords, params={"n_neighbors": 5})
    assert torch.allclose(proj.transform(reference), coords, atol=1e-5)
    midpoint = proj.transform((reference[0] + 1e-3 * torch.ones(5))[None])[0]
    assert torch.allclose(midpoint, coords[0], atol=0.05)
    proj.save(tmp_path / "p")
    loaded = Projection.load(tmp_path / "p")
    assert torch.equal(loaded.transform(reference), proj.transform(reference))


def test_umap_without_the_package_is_a_clear_error(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "umap", None)   # import umap -> ImportError
    with pytest.raises(WorkbenchError, match="umap-learn"):
        fit_projection(tiny_model, CORPUS, "umap", cache_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_bad_projection_arguments(tiny_model, tmp_path):
    with pytest.raises(WorkbenchError, match="unknown projection method"):
        fit_projection(tiny_model, CORPUS, "tsne", cache_dir=tmp_path)
    with pytest.raises(WorkbenchError, match="PCA takes no parameters"):
        fit_projection(tiny_model, CORPUS, "pca", cache_dir=tmp_path, n_neighbors=5)
    with pytest.raises(WorkbenchError, match="n_components"):
        fit_projection(tiny_model, CORPUS, "pca", 99, cache_dir=tmp_path)


def test_figure_overlays_paths(tiny_model, tmp_path):
    proj = fit_projection(tiny_model, CORPUS, cache_dir=tmp_path)
    path = torch.randn(3, 6, tiny_model.vae_config.latent_dim)       # 3 paths of 6 points
    fig = proj.figure({"trajectory": path}, height=333)
    assert fig.layout.height == 333
    assert len(fig.data) == 1 + 3
    assert list(fig.data[1].x) == pytest.approx(proj.transform(path[0])[:, 0].tolist())


@pytest.mark.heavy
def test_umap_fit_cache_and_transform(tiny_model, tmp_path):
    pytest.importorskip("umap")
    first = fit_projection(tiny_model, CORPUS, "umap", 2, cache_dir=tmp_path, n_neighbors=10)
    assert first.coords.shape == (len(reference_cloud(tiny_model, CORPUS)), 2)
    again = fit_projection(tiny_model, CORPUS, "umap", 2, cache_dir=tmp_path, n_neighbors=10)
    assert torch.equal(again.coords, first.coords)
    assert again.params["n_neighbors"] == 10 and again.params["random_state"] == 0
    # reference points map onto their own coordinates (exact duplicates share the mean of theirs)
    error = (again.transform(again.reference) - again.coords).norm(dim=-1)
    spread = again.coords.std(0).norm()
    assert error.median() < 1e-4 * spread

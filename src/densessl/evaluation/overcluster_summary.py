"""The printed line and the headline rows of an overclustering result (the registry's
``describe`` and ``summarize`` of :mod:`densessl.evaluation.overcluster`)."""

from __future__ import annotations

from typing import Any

from densessl.evaluation.overcluster import OverclusterProtocol


def describe_overclustering(p: OverclusterProtocol) -> str:
    """The settings of an overclustering run in one line (printed beside every number)."""
    prep = ("standardise, " if p.standardize else "") + (
        f"PCA-{p.pca_dim}" if p.pca_dim is not None else "no PCA"
    )
    seeds = ",".join(str(s) for s in p.seeds)
    km = {"faiss": "faiss k-means", "torch": f"k-means ({p.init})"}.get(p.backend, "k-means (auto)")
    return (
        f"{p.image_size} px, scored at {p.mask_size} px; {prep}; {km} "
        f"{p.iters} it x{p.n_init} restarts; seeds {seeds}"
    )


def summarize_overclustering(
    p: OverclusterProtocol, results: dict[str, Any]
) -> list[dict[str, Any]]:
    """Headline rows of an overclustering result: one per K."""
    return [
        {
            "result": key,
            "miou": entry["miou_mean"],
            "std": entry["miou_std"],
            "matching": entry["matching"],
        }
        for key, entry in results["results"].items()
    ]

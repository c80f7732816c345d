"""The printed line and the headline rows of a retrieval result (the registry's ``describe``
and ``summarize`` of :mod:`densessl.evaluation.retrieval`)."""

from __future__ import annotations

from typing import Any

from densessl.evaluation.retrieval import RetrievalProtocol


def describe_retrieval(p: RetrievalProtocol) -> str:
    """The settings of a retrieval run in one line (printed beside every number)."""
    memory = "all patches" if p.memory_size is None else f"{p.memory_size} patches"
    return (
        f"{p.image_size} px; memory {memory} from {p.augment_epochs} aug passes; "
        f"k={p.num_neighbors}, T={p.temperature:g}; std ({p.std[0]:g}, {p.std[1]:g}, "
        f"{p.std[2]:g}); seed {p.seed}"
    )


def summarize_retrieval(p: RetrievalProtocol, results: dict[str, Any]) -> list[dict[str, Any]]:
    """Headline rows: mIoU without matching, and Hungarian-matched as the official code."""
    return [
        {"result": "mIoU", "miou": value, "std": None, "matching": matching}
        for matching, value in (
            ("none", results["miou_no_matching"]),
            ("hungarian (as the official code)", results["miou_hungarian"]),
        )
    ]

"""Opt-in speed settings of the trainer: ``torch.compile`` of the backbones' blocks.

``train.compile=true`` compiles every transformer block of every :class:`ViTBackbone` in
the method (student and teacher) in place (``nn.Module.compile``): parameter names, state
dicts, checkpoints and exports stay exactly as without it, and the method's own Python
(heads, losses, view bookkeeping) runs eagerly, so no method needs to be compile-friendly.
One graph serves all blocks of a width; each crop resolution compiles once (then dynamic
shapes). Worth it on GPUs; on CPU compilation costs more than it saves for short runs.
Activation checkpointing is ``backbone.grad_checkpointing`` (:mod:`densessl.models.vit`).
"""

from __future__ import annotations

from torch import nn

from densessl.models.vit import ViTBackbone

__all__ = ["compile_backbones"]


def compile_backbones(module: nn.Module) -> int:
    """Compile the blocks of every :class:`ViTBackbone` under ``module`` in place.

    Returns:
        The number of blocks compiled.
    """
    count = 0
    for sub in module.modules():
        if isinstance(sub, ViTBackbone):
            for block in sub.model.blocks:
                block.compile()
                count += 1
    return count

"""SelfPatch's two-level loss: image-level DINO loss plus λ times the patch-level DINO loss.

Yun et al., "Patch-level Representation Learning for Self-supervised Vision Transformers",
CVPR 2022; official code alinlab/SelfPatch @81aef149 (``main_selfpatch.py``). Each level has
its own centre (DINO centring, all-reduced inside :class:`~densessl.methods.dino.loss.DINOLoss`);
see :mod:`densessl.methods.selfpatch.method` for how the logits are produced. Details:
docs/methods/selfpatch.md
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from densessl.methods.dino.loss import DINOLoss

VIEW_CHOICES = ("all", "global")

__all__ = ["VIEW_CHOICES", "SelfPatchLoss"]


class SelfPatchLoss(nn.Module):
    """``L_img + λ·L_patch`` with an image centre and a patch centre (see module docstring).

    Args:
        out_dim / patch_out_dim: K and Kp.
        num_global: G, the global views (the targets of the image loss).
        patch_loss_weight: λ.
        student_temp / center_momentum: as in :class:`~densessl.methods.dino.loss.DINOLoss`.
        image_center_views: ``"all"`` or ``"global"`` teacher views update the image centre.

    Buffers (in the ``state_dict``): ``image_loss.center [1, K]``, ``patch_loss.center
    [1, Kp]``.
    """

    def __init__(
        self,
        out_dim: int,
        patch_out_dim: int,
        num_global: int,
        patch_loss_weight: float = 0.1,
        student_temp: float = 0.1,
        center_momentum: float = 0.9,
        image_center_views: str = "all",
    ) -> None:
        super().__init__()
        if image_center_views not in VIEW_CHOICES:
            raise ValueError(f"image_center_views must be one of {VIEW_CHOICES}")
        self.num_global = num_global
        self.patch_loss_weight = float(patch_loss_weight)
        self.image_center_views = image_center_views
        self.image_loss = DINOLoss(out_dim, student_temp, center_momentum)
        self.patch_loss = DINOLoss(patch_out_dim, student_temp, center_momentum)

    def forward(
        self,
        student_image: Sequence[Tensor],
        student_patch: Sequence[Tensor],
        teacher_image: Sequence[Tensor],
        teacher_patch: Sequence[Tensor],
        teacher_temp: float,
    ) -> dict[str, Tensor]:
        """The loss terms.

        Args:
            student_image: V views ``[B, K]`` (globals first).
            student_patch: V views ``[B, N_v, Kp]``.
            teacher_image: T views ``[B, K]``, T = G (``teacher_views="global"``) or V;
                only the first G are targets.
            teacher_patch: T views ``[B, N_v, Kp]``; view v is the target of student view v.
            teacher_temp: τt of this step.

        Returns:
            ``{"loss", "image_loss", "patch_loss"}`` float32 scalars.
        """
        if len(teacher_image) < self.num_global or len(teacher_patch) != len(teacher_image):
            raise ValueError(
                f"expected at least {self.num_global} teacher views with image and patch "
                f"logits each, got {len(teacher_image)} and {len(teacher_patch)}"
            )
        image = self.image_loss(
            student_image, teacher_image[: self.num_global], teacher_temp, skip_same_view=True
        )
        patch = self.patch_loss(student_patch, teacher_patch, teacher_temp, same_view_only=True)
        return {
            "loss": image + self.patch_loss_weight * patch,
            "image_loss": image.detach(),
            "patch_loss": patch.detach(),
        }

    @torch.no_grad()
    def update_centers(
        self, teacher_image: Sequence[Tensor], teacher_patch: Sequence[Tensor]
    ) -> None:
        """EMA of both centres (all-reduced): image centre from the ``image_center_views``,
        patch centre from every token of every teacher view. Call after :meth:`forward`."""
        views = (
            teacher_image if self.image_center_views == "all" else teacher_image[: self.num_global]
        )
        self.image_loss.update_center(views)
        self.patch_loss.update_center(teacher_patch)

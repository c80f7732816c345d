"""Keypoint-pair datasets for correspondence: :mod:`.spair` (SPair-71k layout) and
:mod:`.scenes` (two views of one synthetic scene with exact correspondences)."""

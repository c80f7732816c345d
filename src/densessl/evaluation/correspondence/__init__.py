"""Keypoint correspondence (``densessl eval correspondence``): :mod:`.protocol` (settings,
the SPair-71k PCK run) and :mod:`.matching` (Probe3D's nearest-neighbour transfer)."""

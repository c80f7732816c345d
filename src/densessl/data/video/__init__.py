"""Video datasets for label propagation: :mod:`.davis` (DAVIS-2017 layout) and
:mod:`.scenes` (synthetic videos of moving, occluding objects with exact masks)."""

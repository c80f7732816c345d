"""DAVIS-2017 label propagation (``densessl eval video``): :mod:`.protocol` (settings and
the run), :mod:`.propagation` (DINO's affinity propagation), :mod:`.davis_metrics` (J, F)."""

"""Synthetic scenes with exact dense labels, the embedded default dataset
(:mod:`.dataset`; rendering in :mod:`.render`, :mod:`.shapes`, :mod:`.textures`)."""

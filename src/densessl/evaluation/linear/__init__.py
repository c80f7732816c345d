"""Leopart's linear / FCN probe: settings and scoring (:mod:`.probe`), heads and their
training loop (:mod:`.heads`).
"""

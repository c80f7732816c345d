"""Files densessl reads and writes: checkpoints (:mod:`.checkpoint`: format, atomic save,
``weights_only`` load) and robust image decoding (:mod:`.decode`).
"""

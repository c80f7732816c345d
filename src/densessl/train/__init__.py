"""The generic training loop (:mod:`.trainer`: :func:`~densessl.train.trainer.pretrain`) and
what it is made of: run directories, precision, numerics, warm starts, compilation; and the
supervised reference row of the quality benchmark (:mod:`.supervised`).
"""

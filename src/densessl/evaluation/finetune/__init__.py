"""End-to-end fine-tuning for dense transfer (``densessl finetune seg``).

The backbone is unfrozen and trained with a decoder on a labelled segmentation set:
Segmenter's linear decoder (LOCA's ADE20K protocol) or SelfPatch's Semantic FPN, both in
plain PyTorch (no mmcv / mmseg). :func:`densessl.evaluation.finetune.api.finetune` is the
entry point; the decoders are listed in :mod:`densessl.evaluation.finetune.registry`.
"""

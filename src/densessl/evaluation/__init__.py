"""Dense-feature evaluation on frozen patch features.

``densessl.evaluate(protocol, backbone=..., dataset=...)``
(:func:`densessl.evaluation.api.evaluate`) runs one registered protocol end to end
(:mod:`densessl.evaluation.registry`); the CLI is ``densessl eval PROTOCOL``.

Every evaluator takes a *feature extractor*: any callable
``extractor(images[B, 3, H, W]) -> patches[B, h, w, D]`` (ImageNet-normalised float images,
row-major patch grid) with a ``patch_size`` attribute. Evaluators never import a method, so
they measure our checkpoints, timm models or official weights the same way.

Modules (import them directly; this package imports nothing heavy):

* :mod:`densessl.evaluation.api`: :func:`~densessl.evaluation.api.evaluate`, presets and splits.
* :mod:`densessl.evaluation.features`: frozen extractors from runs, checkpoints, exports, timm
  models, official DINO weights, or random init.
* :mod:`densessl.evaluation.miou`: dataset-level confusion matrix, mIoU, Hungarian and
  many-to-one matching (Leopart conventions).
* :mod:`densessl.ops.cluster`: seeded, chunked k-means in torch, standardisation and PCA
  (an approximation of faiss), and :mod:`densessl.ops.faiss_backend`: Leopart's numerics
  (sklearn-style chunked standardisation, faiss ``PCAMatrix`` and ``Kmeans``).
* :mod:`densessl.evaluation.preprocess`: resizing, ImageNet normalisation, collate, and
  feature extraction shared by the evaluators.
* :mod:`densessl.evaluation.linear.probe` (+ :mod:`densessl.evaluation.linear.heads`):
  Leopart's linear / FCN probe.
* :mod:`densessl.evaluation.overcluster`: Leopart's overclustering protocol (faiss by
  default); :mod:`densessl.evaluation.overcluster_parity`: its official loaders and the
  differences from Leopart named in every result.
* :mod:`densessl.evaluation.retrieval`: Hummingbird dense nearest-neighbour retrieval.
* :mod:`densessl.evaluation.unsupervised.pipeline` (+ its settings
  :mod:`~densessl.evaluation.unsupervised.settings` and the search
  :mod:`~densessl.evaluation.unsupervised.community_search`): Leopart's fully-unsupervised
  segmentation, built from :mod:`~densessl.evaluation.unsupervised.attention` (features with
  CLS attention), :mod:`~densessl.evaluation.unsupervised.cbfe` (cluster-based foreground
  extraction) and :mod:`~densessl.evaluation.unsupervised.community` (co-occurrence graph,
  Infomap/Leiden).
* :mod:`densessl.evaluation.video` (:mod:`~densessl.evaluation.video.protocol`,
  :mod:`~densessl.evaluation.video.propagation`, :mod:`~densessl.evaluation.video.davis_metrics`):
  DINO's DAVIS-2017 label propagation scored with DAVIS J and F.
* :mod:`densessl.evaluation.correspondence` (:mod:`~densessl.evaluation.correspondence.protocol`,
  :mod:`~densessl.evaluation.correspondence.matching`): SPair-71k keypoint transfer, PCK.
* :mod:`densessl.evaluation.report`: result rows and the printed table.
"""

"""Pictures of patch features: panels per image (:mod:`.panels`:
:func:`~densessl.viz.panels.visualize`), the joint PCA colouring (:mod:`.pca`) and drawing
helpers (:mod:`.draw`).
"""

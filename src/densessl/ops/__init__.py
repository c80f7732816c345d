"""Building blocks shared by methods and evaluations, none of which knows a method: crop
geometry, Sinkhorn-Knopp, keyed randomness, schedules, distributed helpers, clustering
(k-means, PCA) and the CLS-attention foreground.
"""

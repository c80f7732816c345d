"""Leopart's fully-unsupervised segmentation: the pipeline (:mod:`.pipeline`), its settings
(:mod:`.settings`), features with CLS attention (:mod:`.attention`), cluster-based foreground
extraction (:mod:`.cbfe`), the co-occurrence graph (:mod:`.community`) and the
community-detection search (:mod:`.community_search`).
"""

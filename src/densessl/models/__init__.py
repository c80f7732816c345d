"""The backbone and what loads it: the timm ViT wrapper (:mod:`.vit`), its attention kernels
(:mod:`.attention`), checkpoint loading (:mod:`.loading`), official DINO files
(:mod:`.dino_compat`), the released checkpoints of the other papers (:mod:`.formats`) and the
projection heads (:mod:`.heads`).
"""

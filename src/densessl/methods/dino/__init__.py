"""DINO (the image-level baseline): the method (:mod:`.method`), its loss (:mod:`.loss`), its
helpers and its presets (``presets/*.yaml``). Details: docs/methods/dino.md"""

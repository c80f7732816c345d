"""FLSL: the method (:mod:`.method`), its loss (:mod:`.loss`), its helpers and
its presets (``presets/*.yaml``)."""

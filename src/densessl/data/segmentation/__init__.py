"""Labeled segmentation datasets: shared machinery (:mod:`.files`), one module per layout,
and the registry that names them (:mod:`.registry`)."""

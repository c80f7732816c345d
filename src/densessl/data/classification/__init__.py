"""Image classification layouts (kind ``classification`` of :mod:`densessl.data.registry`)."""

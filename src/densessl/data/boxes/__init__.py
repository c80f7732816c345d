"""Object-box layouts (kind ``boxes`` of :mod:`densessl.data.registry`): items
``{"image": uint8 [3, H, W], "boxes": float32 [N, 4] (x0, y0, x1, y1) pixels, "name", "index"}``."""

"""NeCo: patch-neighbour ordering consistency (Pariza et al., ICLR 2025)."""

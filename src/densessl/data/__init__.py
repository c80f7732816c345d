"""Datasets: synthetic scenes (the embedded default), unlabeled image folders, labeled sets."""

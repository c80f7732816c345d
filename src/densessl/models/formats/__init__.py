"""Converters from the official checkpoint layouts of each backbone family to timm keys."""

"""Pretraining methods and their registry (see :mod:`densessl.methods.base`)."""

from densessl.methods.base import Method, StepInfo, get_method, list_methods, register_method

__all__ = ["Method", "StepInfo", "get_method", "list_methods", "register_method"]

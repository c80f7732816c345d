"""Pretraining methods: the contract and registry (:mod:`.base`), the student/teacher pair
shared by the methods (:mod:`.student_teacher`), and one package per method
(``<name>/method.py``, ``loss.py``, helpers, ``presets/*.yaml``), discovered on first use."""

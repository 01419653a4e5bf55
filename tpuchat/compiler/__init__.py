"""Builds tiny test bmodels with Sophgo's TPU-MLIR compiler (test and demo fixtures only)."""

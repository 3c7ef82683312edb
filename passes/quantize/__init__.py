"""Quantization and precision passes: ``quantize`` (int8 Q/DQ, calibrated) and ``fp16``.

See :mod:`kiln.passes.quantize.quantize` for the int8 pass,
:mod:`kiln.passes.quantize.placement` for where Q/DQ go,
:mod:`kiln.passes.quantize.sensitivity` for ``keep-float``, and
:mod:`kiln.passes.quantize.opset` for the opset upgrade they need.
"""

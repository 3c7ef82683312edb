"""kiln.quant: helpers shared by the quantization passes and the calibration tools.

* :mod:`kiln.quant.weights`: symmetric per-channel int8 weight quantization.
* :mod:`kiln.quant.metrics`: SQNR and friends, to compare float and quantized outputs.
"""

from kiln.quant.metrics import sqnr_db
from kiln.quant.weights import QMAX, fake_quantize, quantize_activation, quantize_weight, weight_scales

__all__ = ["QMAX", "fake_quantize", "quantize_activation", "quantize_weight", "sqnr_db", "weight_scales"]

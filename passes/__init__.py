"""Built-in kiln passes: cleanup, folding, fusion, quantization, layout, precision, memory."""

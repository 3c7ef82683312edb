"""Layer fusion passes, written as rewrite rules (:mod:`kiln.rewrite`).

- ``fuse-bn`` (:mod:`.batchnorm`): BatchNormalization into Conv/ConvTranspose/Gemm/MatMul, Mul/Add, or Mul + Add;
- ``fuse-bias`` (:mod:`.bias`): Add/Mul/Div by constants into linear ops, constant chains merged;
- ``fuse-pad`` (:mod:`.pad`): constant Pad into Conv/AveragePool/MaxPool pads;
- ``fuse-act`` (:mod:`.activation`): activations into ``kiln.ConvAct`` / ``kiln.GemmAct`` (target pipelines).

The first three are exact (up to the rounding of folded weights) and never add nodes, so the ONNX
presets ``O2``/``O3`` run them; ``fuse-act`` is for the NCNN, TFLite and TensorRT legalization pipelines.
"""

"""Runtime bridges: run a model or an artifact on its own runtime.

Each bridge module has ``run(artifact, inputs) -> dict[str, np.ndarray]``;
``kiln verify``, the tests and the benchmarks use them.  ``onnxruntime`` is
the reference for ONNX; target runtimes (ncnn, LiteRT, TensorRT) come with
their targets.
"""

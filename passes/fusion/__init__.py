"""Layer and tensor fusion passes, written as rewrite rules (:mod:`kiln.rewrite`).

Layer (vertical) fusions:

- ``fuse-bn`` (:mod:`.batchnorm`): BatchNormalization into Conv/ConvTranspose/Gemm/MatMul, Mul/Add, or Mul + Add;
- ``fuse-bias`` (:mod:`.bias`): Add/Mul/Div by constants into linear ops, constant chains merged;
- ``fuse-pad`` (:mod:`.pad`): constant Pad into Conv/AveragePool/MaxPool pads;
- ``fuse-act`` (:mod:`.activation`): activations (ONNX ops, or the ``kiln.Gelu``/``Swish``/``HardSwish`` that
  raising made) into ``kiln.ConvAct`` / ``kiln.GemmAct`` (target pipelines, ``O3``);
- ``fuse-global-pool`` (:mod:`.pool`): a global pool + Flatten/Reshape to ``[N, C]`` as one ReduceMean/ReduceMax
  (``O3``);
- ``fuse-gemm`` (:mod:`.gemm`): 2-D MatMul + Add and folded Transposes into Gemm;
- ``fold-elementwise`` (:mod:`.elementwise`): chains of elementwise ops with constants.

Decomposed patterns raised to single ops (``raise-patterns``, :mod:`.raise_patterns`, runs them all):
``raise-norm`` (:mod:`.norm`), ``raise-gelu`` (:mod:`.gelu`), ``raise-swish`` (:mod:`.swish`),
``raise-softmax`` (:mod:`.softmax`), ``raise-attention`` (:mod:`.attention`), and
``raise-channel-shuffle`` (:mod:`.shuffle`).

Tensor (horizontal) fusions: ``fuse-sibling-conv`` (:mod:`.sibling_conv`), ``fuse-sibling-matmul``
(:mod:`.sibling_matmul`), ``fuse-concat-split`` (:mod:`.concat_split`), ``merge-slices`` (:mod:`.slices`).

Which of them the ONNX preset ``O2`` runs, and the measurements behind each choice, is written in
:mod:`kiln.passmanager.presets`; the rest are in the ``target-fusions`` bundle for the NCNN, TFLite
and TensorRT legalization pipelines, which ``O3`` also runs (after ``fuse-global-pool``).
``kiln inspect MODEL --fusions`` reports what each rule did on a model.
"""

"""Layout passes: NCHW -> NHWC with transpose sinking and cancellation (``to-nhwc``)."""

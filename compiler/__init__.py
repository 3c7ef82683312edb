"""kiln: a graph-optimization compiler for neural networks."""

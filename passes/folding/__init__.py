"""Folding passes: constants, and the shape-computation subgraphs exporters leave behind."""

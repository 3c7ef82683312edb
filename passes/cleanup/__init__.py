"""Cleanup passes: dead code, common subexpressions, no-op removal."""

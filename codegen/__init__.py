"""kiln code generators, one sub-package per target."""

"""An example kiln plugin.

kiln finds it through the ``kiln.passes`` entry point in ``pyproject.toml``,
which names this package: importing it imports the modules below, whose
``@register_pass`` classes become available by name in pipelines.
"""

from kiln_example_plugin.count_ops import CountOps
from kiln_example_plugin.hardswish import HARDSWISH_RULES, FuseHardSwish

__all__ = ["HARDSWISH_RULES", "CountOps", "FuseHardSwish"]

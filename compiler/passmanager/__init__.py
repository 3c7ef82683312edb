"""kiln's pass manager: passes, the registry, pipeline strings, instruments.

::

    from kiln.passmanager import PassManager, TimePasses

    report = PassManager("O2,fuse-conv-bn", instruments=[TimePasses()]).run(graph)

See :mod:`kiln.passmanager.pipeline` for the pipeline grammar and
:mod:`kiln.passmanager.registry` for how passes and plugins register.
"""

from kiln.passmanager.base import Pass, PassContext
from kiln.passmanager.instruments import (
    DumpIRDir,
    PassInstrument,
    PrintIRAfter,
    PrintIRAfterChange,
    StopAfter,
    TimePasses,
    VerifyEach,
    read_reproducer,
)
from kiln.passmanager.manager import PassManager, PassRecord, PassReport, RunState
from kiln.passmanager.options import OptionSpec, option_specs
from kiln.passmanager.pipeline import BundleStep, PassStep, Pipeline, PipelineParseError, RepeatStep
from kiln.passmanager.presets import PRESETS
from kiln.passmanager.registry import (
    ENTRY_POINT_GROUP,
    DuplicatePassError,
    PassInfo,
    PassRegistry,
    available_passes,
    default_registry,
    load_pass_file,
    lookup_pass,
    register_bundle,
    register_pass,
    use_registry,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "PRESETS",
    "BundleStep",
    "DumpIRDir",
    "DuplicatePassError",
    "OptionSpec",
    "Pass",
    "PassContext",
    "PassInfo",
    "PassInstrument",
    "PassManager",
    "PassRecord",
    "PassRegistry",
    "PassReport",
    "PassStep",
    "Pipeline",
    "PipelineParseError",
    "PrintIRAfter",
    "PrintIRAfterChange",
    "RepeatStep",
    "RunState",
    "StopAfter",
    "TimePasses",
    "VerifyEach",
    "available_passes",
    "default_registry",
    "load_pass_file",
    "lookup_pass",
    "option_specs",
    "read_reproducer",
    "register_bundle",
    "register_pass",
    "use_registry",
]

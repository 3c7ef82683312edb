"""The driver: the ``kiln`` command and the compile orchestration behind it.

- ``kiln.driver.cli``: the command (``main(argv) -> exit status``).
- ``kiln.driver.compile``: ``compile(model, target, out_dir, ...) -> CompileResult``
  and the target table.
- ``kiln.driver.verify``: model-vs-artifact comparison and the runtime table.
- ``kiln.driver.inspect_model``: what ``kiln inspect`` reports.

Only the driver knows every layer (frontend, passes, codegen, runtimes); it
imports them lazily so ``kiln --help`` stays instant.  (This package does not
re-export ``compile``: that would shadow the ``kiln.driver.compile`` module.)
"""

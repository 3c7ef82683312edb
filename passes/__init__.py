"""Built-in kiln passes: cleanup, folding, fusion, quantization, layout, precision, memory."""


def register_builtins() -> None:
    """Imports every built-in pass module, so their ``@register_pass`` classes register.

    This is the ``kiln-builtin`` entry point of the ``kiln.passes`` group
    (``setup.py``); the pass registry calls it the first time a pass name is
    looked up, and registers the ``@register_pass`` classes of this package.
    """
    import importlib
    import pkgutil

    for module in sorted(pkgutil.walk_packages(__path__, prefix=__name__ + "."), key=lambda m: m.name):
        if not module.name.rsplit(".", 1)[-1].startswith("_"):
            importlib.import_module(module.name)

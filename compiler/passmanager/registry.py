"""The pass registry: kebab-case names -> pass classes and named bundles.

Where names come from:

* ``@register_pass`` on a :class:`~kiln.passmanager.base.Pass` subclass
  registers it (in the default registry) when its module is imported.
* The entry-point group ``kiln.passes`` is read lazily, the first time a
  name is looked up or listed.  Each entry point names

  - a **Pass class** (``count-ops = my_plugin.count:CountOps``): registered;
  - a **module** (``my-plugin = my_plugin``): imported; its ``@register_pass``
    classes (and those of its submodules it imports) are registered;
  - a **function** (``kiln-builtin = kiln.passes:register_builtins``):
    called with no arguments; it may return Pass classes, and the
    ``@register_pass`` classes of its package are registered.

  kiln's own passes come in through that same group (see ``setup.py``), so
  built-ins and plugins are one mechanism.  A plugin that fails to import is
  logged and named in later "unknown pass" errors; it does not stop kiln.
* :func:`load_pass_file` runs a Python file as a module (``--load-pass``)
  and registers the Pass subclasses it defines.  Nothing from a pipeline
  string is ever imported or evaluated.
* Bundles (``O0``..``O3``, later ``int8``) map a name to a pipeline string;
  :func:`register_bundle`.  The text is parsed only when the bundle is used,
  so a bundle naming a pass that is not registered breaks only itself.

One name, one provider: a name defined twice (pass or bundle) raises
:class:`DuplicatePassError` naming both providers.  Registering the very same
class twice is harmless.  An unknown name suggests close matches.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import hashlib
import importlib.metadata
import importlib.util
import logging
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from kiln.errors import PipelineError, UsageError
from kiln.passmanager.base import Pass
from kiln.passmanager.options import OptionSpec, option_specs

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kiln.passes"
"""The one entry-point group that built-ins and plugins register through."""

REPEAT = "repeat"
"""The structural element ``repeat{max=N}(...)``; no pass may take its name."""

_PASS_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*\Z")
_BUNDLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*\Z")

P = TypeVar("P", bound=type[Pass])

# Where registrations come from while an entry point or a pass file is loading.
_SOURCE: contextvars.ContextVar[str | None] = contextvars.ContextVar("kiln_pass_source", default=None)
# Every class @register_pass has seen, in order, so another registry can adopt them.
_DECORATED: list[type[Pass]] = []


class DuplicatePassError(PipelineError):
    """Two providers define the same pass or bundle name."""


@dataclass(frozen=True)
class PassInfo:
    """What the registry knows about one name.

    Attributes:
        name: the kebab-case pass name, or the bundle name.
        kind: ``"pass"``, ``"bundle"`` or ``"structural"`` (``repeat``).
        provider: where it came from, for messages (``kiln.passes.dce``,
            ``entry point 'x' of my-plugin 0.1``, ``file /path/to/p.py``).
        summary: the one-line doc.
        cls: the pass class (passes only).
        pipeline: the pipeline text (bundles only).
    """

    name: str
    kind: str
    provider: str
    summary: str = ""
    cls: type[Pass] | None = None
    pipeline: str | None = None

    @property
    def origin(self) -> str:
        """The class path and provider, as duplicate errors name it."""
        if self.cls is not None:
            return f"{self.cls.__module__}.{self.cls.__qualname__} ({self.provider})"
        return self.provider

    def options(self) -> tuple[OptionSpec, ...]:
        return option_specs(self.cls) if self.cls is not None else ()


_REPEAT_INFO = PassInfo(
    REPEAT,
    "structural",
    "kiln.passmanager.pipeline",
    "Runs a nested pipeline until no pass in it changes the graph, at most max times.",
)


class PassRegistry:
    """Names -> passes and bundles, discovered lazily from entry points.

    Args:
        entry_point_group: the group to discover, or ``None`` for a registry
            filled only by hand (tests).
        entry_points: overrides where entry points come from (a callable
            returning ``importlib.metadata.EntryPoint`` objects); for tests.
    """

    def __init__(
        self,
        *,
        entry_point_group: str | None = ENTRY_POINT_GROUP,
        entry_points: Callable[[], Iterable[Any]] | None = None,
    ) -> None:
        self._infos: dict[str, PassInfo] = {}
        self._group = entry_point_group
        self._entry_points = entry_points
        self._discovered = entry_point_group is None and entry_points is None
        self._discovering = False
        self._discovery_error: DuplicatePassError | None = None
        self._files: dict[Path, list[str]] = {}
        self.failures: list[tuple[str, BaseException]] = []
        """Entry points that failed to load: (description, exception)."""

    # ---- registration

    def add_pass(self, cls: P, *, provider: str | None = None) -> P:
        """Registers pass class ``cls`` under ``cls.name``; returns ``cls``.

        Raises:
            PipelineError: ``cls`` is not a Pass, its name is not kebab-case,
                or an option type cannot be written in a pipeline string.
            DuplicatePassError: another provider already uses the name.
        """
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise PipelineError(f"{cls!r} is not a kiln Pass subclass and cannot be registered")
        name = cls.name
        if not isinstance(name, str) or not _PASS_NAME.match(name):
            raise PipelineError(
                f"pass class {cls.__module__}.{cls.__qualname__} has name {name!r}; "
                "a pass name is kebab-case: lowercase words joined by '-' (fuse-conv-bn)"
            )
        try:
            option_specs(cls)
        except TypeError as exc:
            raise PipelineError(str(exc)) from None
        provider = provider or _SOURCE.get() or f"module {cls.__module__}"
        info = PassInfo(name, "pass", provider, cls.summary(), cls=cls)
        existing = self._infos.get(name)
        if existing is not None and existing.cls is not None and _same_class(existing.cls, cls):
            if existing.cls is not cls:  # the module was reloaded: keep the new class
                self._infos[name] = info
            return cls
        self._claim(info)
        return cls

    def register_pass(self, cls: P) -> P:
        """Class decorator form of :meth:`add_pass` for this registry."""
        return self.add_pass(cls)

    def add_bundle(self, name: str, pipeline: str, *, summary: str = "", provider: str | None = None) -> None:
        """Registers a named bundle (``O2`` -> ``"repeat{max=4}(...)"``).

        The text is not parsed here: it is parsed when the bundle is used.
        """
        if not isinstance(name, str) or not _BUNDLE_NAME.match(name):
            raise PipelineError(f"bundle name {name!r} is not a valid name (letters, digits and '-')")
        if not isinstance(pipeline, str):
            raise PipelineError(
                f"bundle {name!r}: the pipeline must be a string, not {type(pipeline).__name__}"
            )
        provider = provider or _SOURCE.get() or "unknown provider"
        existing = self._infos.get(name)
        info = PassInfo(name, "bundle", provider, summary, pipeline=pipeline)
        if existing is not None and (existing.kind, existing.pipeline, existing.provider) == (
            "bundle",
            pipeline,
            provider,
        ):
            return
        self._claim(info)

    def _claim(self, info: PassInfo) -> None:
        if info.name == REPEAT:
            raise DuplicatePassError(
                f"the name {REPEAT!r} is reserved for the structural repeat{{max=N}}(...); {info.origin} cannot use it"
            )
        existing = self._infos.get(info.name)
        if existing is not None:
            raise DuplicatePassError(
                f"{info.kind} name {info.name!r} is defined twice: by {existing.origin} and by {info.origin}"
            )
        self._infos[info.name] = info
        logger.debug("registered %s %r from %s", info.kind, info.name, info.provider)

    # ---- lookup

    def get(self, name: str) -> PassInfo | None:
        """The entry for ``name``, or ``None``; discovers entry points first."""
        self.discover()
        if name == REPEAT:
            return _REPEAT_INFO
        return self._infos.get(name)

    def lookup(self, name: str) -> PassInfo:
        """The entry for ``name``.

        Raises:
            PipelineError: no such name; the notes suggest close matches.
        """
        info = self.get(name)
        if info is None:
            raise PipelineError(f"unknown pass {name!r}", notes=self.unknown_notes(name))
        return info

    def unknown_notes(self, name: str) -> list[str]:
        """Notes for an unknown ``name``: close matches and plugins that failed to load."""
        notes: list[str] = []
        close = self.suggest(name)
        if close:
            notes.append("did you mean " + " or ".join(repr(c) for c in close) + "?")
        else:
            notes.append(f"{len(self.names())} passes and bundles are registered; `kiln passes` lists them")
        for where, exc in self.failures[:3]:
            notes.append(f"{where} failed to load: {type(exc).__name__}: {exc}")
        return notes

    def suggest(self, name: str, candidates: Iterable[str] | None = None) -> list[str]:
        """Up to three known names close to ``name`` (case and ``_``/``-`` ignored first)."""
        pool = list(self.names()) if candidates is None else list(candidates)
        return suggest(name, pool)

    def names(self) -> list[str]:
        """Every registered name (passes, bundles and ``repeat``), sorted."""
        self.discover()
        return sorted([*self._infos, REPEAT])

    def infos(self) -> list[PassInfo]:
        """Every entry, sorted by name."""
        self.discover()
        return [self._infos[n] if n != REPEAT else _REPEAT_INFO for n in self.names()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    # ---- discovery

    def discover(self) -> None:
        """Loads the entry points once (later calls do nothing).

        Raises:
            DuplicatePassError: two providers define one name (raised again on
                every later lookup, so the conflict cannot be missed).
        """
        if self._discovery_error is not None:
            raise self._discovery_error
        if self._discovered or self._discovering:
            return
        self._discovering = True
        try:
            for ep in self._iter_entry_points():
                self._load_entry_point(ep)
        except DuplicatePassError as exc:
            self._discovery_error = exc
            raise
        finally:
            self._discovering = False
            self._discovered = True

    def _iter_entry_points(self) -> list[Any]:
        if self._entry_points is not None:
            return list(self._entry_points())
        assert self._group is not None
        eps = importlib.metadata.entry_points(group=self._group)
        return sorted(eps, key=lambda ep: (_dist_name(ep), ep.name))

    def _load_entry_point(self, ep: Any) -> None:
        dist = _dist_name(ep)
        where = (
            f"entry point {ep.name!r} ({ep.value}) of {dist}"
            if dist
            else f"entry point {ep.name!r} ({ep.value})"
        )
        token = _SOURCE.set(where)
        try:
            obj = ep.load()
            self._adopt(obj, where)
        except DuplicatePassError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop kiln
            logger.warning("kiln: %s failed to load: %s: %s", where, type(exc).__name__, exc)
            self.failures.append((where, exc))
        finally:
            _SOURCE.reset(token)

    def _adopt(self, obj: Any, where: str) -> None:
        """Registers what an entry point's object provides."""
        if isinstance(obj, type):
            self.add_pass(obj, provider=where)
            return
        if isinstance(obj, ModuleType):
            self._adopt_decorated(obj.__name__, where)
            return
        if callable(obj):
            result = obj()
            for item in result or ():
                self.add_pass(item, provider=where)
            package = getattr(obj, "__module__", None)
            if package:
                self._adopt_decorated(package, where)
            return
        raise TypeError(f"names a {type(obj).__name__}; expected a Pass class, a module or a function")

    def _adopt_decorated(self, module: str, where: str) -> None:
        """Registers here the ``@register_pass`` classes of ``module`` and its submodules."""
        prefix = module + "."
        for cls in _DECORATED:
            if cls.__module__ == module or cls.__module__.startswith(prefix):
                self.add_pass(cls, provider=where)

    # ---- pass files

    def load_pass_file(self, path: str | Path) -> list[str]:
        """Runs a Python file as a module and registers the passes it defines.

        Every Pass subclass the file defines with a ``name`` is registered
        (``@register_pass`` is optional there).  Loading the same file again
        does nothing.

        Returns:
            The pass names the file provided.

        Raises:
            UsageError: the file is missing or raises while it runs.
            DuplicatePassError: it defines a name that is already taken.
        """
        file = Path(path).expanduser().resolve()
        if file in self._files:
            return list(self._files[file])
        if not file.is_file():
            raise UsageError(f"--load-pass {path}: no such file")
        digest = hashlib.sha1(str(file).encode()).hexdigest()[:10]
        module_name = f"kiln_pass_file_{re.sub(r'[^0-9A-Za-z_]', '_', file.stem)}_{digest}"
        spec = importlib.util.spec_from_file_location(module_name, file)
        if spec is None or spec.loader is None:
            raise UsageError(f"--load-pass {path}: not a Python file kiln can load")
        module = importlib.util.module_from_spec(spec)
        where = f"file {file}"
        sys.modules[module_name] = module  # dataclasses look their module up while the file runs
        token = _SOURCE.set(where)
        try:
            spec.loader.exec_module(module)
        except DuplicatePassError:
            sys.modules.pop(module_name, None)
            raise
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise UsageError(f"--load-pass {path}: the file raised {type(exc).__name__}: {exc}") from exc
        finally:
            _SOURCE.reset(token)
        names: list[str] = []
        for value in list(vars(module).values()):
            if not (isinstance(value, type) and issubclass(value, Pass)):
                continue
            cls: type[Pass] = value
            if cls.__module__ == module_name and cls.name:
                self.add_pass(cls, provider=where)
                names.append(cls.name)
        if not names:
            logger.warning("kiln: --load-pass %s defines no Pass subclass with a name", path)
        self._files[file] = names
        return list(names)


def _same_class(a: type, b: type) -> bool:
    return a is b or (a.__module__ == b.__module__ and a.__qualname__ == b.__qualname__)


def _dist_name(ep: Any) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return ""
    try:
        return f"{dist.metadata['Name']} {dist.version}"
    except Exception:  # noqa: BLE001 - odd metadata is only cosmetic here
        return ""


def _normalize(name: str) -> str:
    return name.lower().replace("_", "-")


def suggest(name: str, pool: Iterable[str]) -> list[str]:
    """Up to three names of ``pool`` close to ``name``."""
    pool = list(pool)
    exact = [p for p in pool if _normalize(p) == _normalize(name)]
    if exact:
        return exact[:3]
    by_norm: dict[str, str] = {_normalize(p): p for p in pool}
    close = difflib.get_close_matches(_normalize(name), list(by_norm), n=3, cutoff=0.6)
    return [by_norm[c] for c in close]


# --------------------------------------------------------------------------- the default registry

_default: PassRegistry | None = None


def default_registry() -> PassRegistry:
    """The process-wide registry (entry points of ``kiln.passes``, presets ``O0``..``O3``)."""
    global _default
    if _default is None:
        from kiln.passmanager.presets import register_presets

        registry = PassRegistry()
        register_presets(registry)
        _default = registry
    return _default


@contextlib.contextmanager
def use_registry(registry: PassRegistry) -> Iterator[PassRegistry]:
    """Makes ``registry`` the default inside the block (for tests and embedders)."""
    global _default
    saved = _default
    _default = registry
    try:
        yield registry
    finally:
        _default = saved


def register_pass(cls: P) -> P:
    """Class decorator: registers a Pass subclass in the default registry under ``cls.name``.

    Example::

        @register_pass
        @dataclass(frozen=True)
        class DeadCode(Pass):
            \"\"\"Removes nodes whose outputs nobody reads.\"\"\"

            name: ClassVar[str] = "dce"

            def run(self, graph: Graph, ctx: PassContext) -> bool: ...
    """
    default_registry().add_pass(cls)
    if cls not in _DECORATED:
        _DECORATED.append(cls)  # type: ignore[arg-type]
    return cls


def register_bundle(name: str, pipeline: str, *, summary: str = "") -> None:
    """Registers a named bundle (a name for a pipeline string) in the default registry."""
    caller = sys._getframe(1).f_globals.get("__name__", "?")
    default_registry().add_bundle(
        name, pipeline, summary=summary, provider=_SOURCE.get() or f"module {caller}"
    )


def lookup_pass(name: str) -> PassInfo:
    """The default registry's entry for ``name`` (raises ``PipelineError`` with suggestions)."""
    return default_registry().lookup(name)


def available_passes() -> list[PassInfo]:
    """Every pass and bundle of the default registry, sorted by name."""
    return default_registry().infos()


def load_pass_file(path: str | Path, registry: PassRegistry | None = None) -> list[str]:
    """``--load-pass FILE.py``: see :meth:`PassRegistry.load_pass_file`."""
    return (registry or default_registry()).load_pass_file(path)

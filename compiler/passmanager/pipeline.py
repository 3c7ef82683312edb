"""Pipeline strings, after MLIR's textual pass-pipeline grammar.

Example::

    fold,dce,fuse-conv-bn,quantize{calibrator=entropy per-channel=true},repeat{max=3}(fuse-act,dce)

Grammar (EBNF; whitespace is allowed around ``,`` ``(`` ``)`` and inside
braces, and the canonical form has none except one space between options)::

    pipeline = [ element , { "," , element } ] ;
    element  = name , [ options ] , [ "(" , pipeline , ")" ] ;
    name     = letter , { letter | digit | "-" | "_" } ;
    options  = "{" , [ option , { space , option } ] , "}" ;
    option   = key , "=" , value ;                 (* options are separated by spaces *)
    key      = letter , { letter | digit | "-" | "_" } ; (* fields are spelled kebab-case: per-channel *)
    value    = [ item , { "," , item } ] ;         (* commas separate list items *)
    item     = bare | quoted ;
    bare     = { any character but space "," "{" "}" '"' } ;
    quoted   = '"' , { any character but '"' "\\" | "\\" , any character } , '"' ;

Rules:

* A name is a registered pass, a bundle (``O2``), or ``repeat``.
* Options are typed by the pass's dataclass fields (see
  :mod:`kiln.passmanager.options`): ``int``, ``float``, ``bool``
  (``true``/``false``), ``str``, ``Literal`` choices, enums, lists
  (``ops=Relu,Clip``; an empty list is ``ops=``) and ``none`` for optional
  options.  Option separators are spaces only; commas always separate list
  items, so ``{a=1,b=2}`` is an error that says so.
* Only ``repeat{max=N}(...)`` takes a nested pipeline: it runs the inner
  list until no pass in it reports a change, at most ``N`` times (default 10).
* Printing is canonical: no spaces, options in declaration order, only
  options that differ from their defaults, values quoted only when needed.
  ``str(Pipeline.parse(s)) == s`` for canonical ``s``, and
  ``Pipeline.parse(str(p)) == p`` for every pipeline ``p`` of registered passes.

Errors are :class:`PipelineParseError` (a ``kiln.errors.PipelineError``)
naming the pass, the option, the expected type and the column.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from kiln.errors import PipelineError
from kiln.passmanager.base import Pass
from kiln.passmanager.options import (
    _INT,
    OptionSpec,
    OptionValueError,
    RawItem,
    option_specs,
    quote,
)
from kiln.passmanager.registry import REPEAT, suggest

if TYPE_CHECKING:
    from kiln.passmanager.registry import PassInfo, PassRegistry

MAX_DEPTH = 32
"""Deepest nesting of ``repeat(...)`` (and of bundles in bundles) accepted."""

DEFAULT_REPEAT = 10


class PipelineParseError(PipelineError):
    """A pipeline string that does not parse, with the column of the problem.

    Attributes:
        pipeline: the text being parsed.
        position: 0-based offset of the problem in ``pipeline``.
        source: what the text is (``pipeline``, ``bundle 'O2'``).
    """

    def __init__(
        self,
        message: str,
        pipeline: str,
        position: int,
        *,
        source: str = "pipeline",
        notes: list[str] | None = None,
    ):
        self.pipeline = pipeline
        self.position = position
        self.source = source
        self.column = position + 1
        what = f"{source} {pipeline!r}" if source == "pipeline" else f"{source} = {pipeline!r}"
        super().__init__(f"{message} at column {self.column} of {what}", notes=notes)

    def caret(self) -> str:
        """The pipeline and a caret under the problem, for a terminal."""
        return f"{self.pipeline}\n{' ' * self.position}^"


# --------------------------------------------------------------------------- steps


@dataclass(frozen=True, eq=False)
class PassStep:
    """One pass with its options."""

    pass_: Pass

    def _key(self) -> tuple[Any, ...]:
        p = self.pass_
        return (type(p), tuple((s.name, getattr(p, s.name)) for s in option_specs(type(p))))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PassStep) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash((type(self.pass_), self.pass_.name))

    def __str__(self) -> str:
        p = self.pass_
        values = p.option_values()
        parts = [f"{s.key}={s.format(values[s.name])}" for s in option_specs(type(p)) if s.name in values]
        return p.name + ("{" + " ".join(parts) + "}" if parts else "")


@dataclass(frozen=True)
class BundleStep:
    """A named bundle (``O2``), expanded when the pipeline runs."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class RepeatStep:
    """``repeat{max=N}(...)``: the body until it stops changing the graph, at most ``max`` times."""

    body: Pipeline
    max: int = DEFAULT_REPEAT

    def __post_init__(self) -> None:
        if isinstance(self.max, bool) or not isinstance(self.max, int) or self.max < 1:
            raise ValueError(f"repeat max must be an int of at least 1, not {self.max!r}")

    def __str__(self) -> str:
        opts = "" if self.max == DEFAULT_REPEAT else f"{{max={self.max}}}"
        return f"{REPEAT}{opts}({self.body})"


Step = PassStep | BundleStep | RepeatStep

_REPEAT_MAX = OptionSpec(
    name="max", key="max", kind=_INT, default=DEFAULT_REPEAT, doc="most iterations of the nested pipeline"
)


# --------------------------------------------------------------------------- pipelines


class Pipeline:
    """An ordered list of steps: passes, bundles and repeats.

    Build one from text with :meth:`parse`, or from a list whose items are
    Pass instances, Pass classes (default options), pipeline strings, steps
    or other pipelines (spliced in)::

        Pipeline.parse("fold{limit=1024},dce")
        Pipeline([FoldConstants(limit=1024), "dce"])
    """

    __slots__ = ("steps",)

    def __init__(self, items: Iterable[Any] = (), *, registry: PassRegistry | None = None) -> None:
        steps: list[Step] = []
        for item in items:
            if isinstance(item, (PassStep, BundleStep, RepeatStep)):
                steps.append(item)
            elif isinstance(item, Pass):
                steps.append(PassStep(_checked_instance(item)))
            elif isinstance(item, type) and issubclass(item, Pass):
                steps.append(PassStep(_checked_instance(item())))
            elif isinstance(item, Pipeline):
                steps.extend(item.steps)
            elif isinstance(item, str):
                steps.extend(Pipeline.parse(item, registry=registry).steps)
            else:
                raise PipelineError(
                    f"a pipeline item must be a Pass, a pass name or a pipeline string, not {type(item).__name__}"
                )
        self.steps: tuple[Step, ...] = tuple(steps)

    @classmethod
    def parse(cls, text: str, *, registry: PassRegistry | None = None, source: str = "pipeline") -> Pipeline:
        """Parses a pipeline string (see the module docstring for the grammar).

        Raises:
            PipelineParseError: bad syntax, an unknown pass or option, or a
                value of the wrong type; the message has the column.
        """
        if registry is None:
            from kiln.passmanager.registry import default_registry

            registry = default_registry()
        return _Parser(text, registry, source).parse()

    def __str__(self) -> str:
        return ",".join(str(s) for s in self.steps)

    def __repr__(self) -> str:
        return f"Pipeline({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and self.steps == other.steps

    def __hash__(self) -> int:
        return hash(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline([self, other])

    def passes(self) -> Iterator[Pass]:
        """Every pass instance, nested ones included, in order (bundles not expanded)."""
        stack: list[Iterator[Step]] = [iter(self.steps)]
        while stack:
            step = next(stack[-1], None)
            if step is None:
                stack.pop()
            elif isinstance(step, PassStep):
                yield step.pass_
            elif isinstance(step, RepeatStep):
                stack.append(iter(step.body.steps))

    def expand(self, registry: PassRegistry | None = None) -> Pipeline:
        """This pipeline with every bundle replaced by its (parsed) steps.

        Raises:
            PipelineParseError: a bundle's text does not parse (an unknown pass
                in ``O2``, say); the message names the bundle.
            PipelineError: a bundle includes itself.
        """
        if registry is None:
            from kiln.passmanager.registry import default_registry

            registry = default_registry()
        return _expand(self, registry, ())

    def max_runs(self) -> int:
        """The most pass runs this (expanded) pipeline can make."""
        total = 0
        for step in self.steps:
            if isinstance(step, PassStep):
                total += 1
            elif isinstance(step, RepeatStep):
                total += step.max * step.body.max_runs()
            else:
                total += 1
        return total


def _checked_instance(p: Pass) -> Pass:
    if not p.name:
        raise PipelineError(f"pass class {type(p).__qualname__} has no name")
    return p


def _expand(pipeline: Pipeline, registry: PassRegistry, active: tuple[str, ...]) -> Pipeline:
    steps: list[Step] = []
    for step in pipeline.steps:
        if isinstance(step, BundleStep):
            if step.name in active:
                chain = " -> ".join((*active, step.name))
                raise PipelineError(f"bundle {step.name!r} includes itself: {chain}")
            if len(active) >= MAX_DEPTH:
                raise PipelineError(f"bundles nest deeper than {MAX_DEPTH} levels: {' -> '.join(active)}")
            info = registry.lookup(step.name)
            if info.kind != "bundle" or info.pipeline is None:
                raise PipelineError(f"{step.name!r} is not a bundle")
            try:
                body = Pipeline.parse(info.pipeline, registry=registry, source=f"bundle {step.name!r}")
            except PipelineError as exc:
                exc.notes.append(f"bundle {step.name!r} is defined by {info.provider}")
                raise
            steps.extend(_expand(body, registry, (*active, step.name)).steps)
        elif isinstance(step, RepeatStep):
            steps.append(RepeatStep(_expand(step.body, registry, active), step.max))
        else:
            steps.append(step)
    return Pipeline(steps)


# --------------------------------------------------------------------------- the parser


@dataclass
class _RawOption:
    key: str
    key_pos: int
    items: list[RawItem] = field(default_factory=list)
    value_pos: int = 0


class _Parser:
    """A hand-written recursive-descent parser; nesting is capped at :data:`MAX_DEPTH`."""

    def __init__(self, text: str, registry: PassRegistry, source: str) -> None:
        if not isinstance(text, str):
            raise PipelineError(f"a pipeline must be a string, not {type(text).__name__}")
        self.text = text
        self.pos = 0
        self.registry = registry
        self.source = source

    # ---- helpers

    def error(
        self, message: str, pos: int | None = None, notes: list[str] | None = None
    ) -> PipelineParseError:
        return PipelineParseError(
            message, self.text, self.pos if pos is None else pos, source=self.source, notes=notes
        )

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def found(self) -> str:
        c = self.peek()
        return "the end" if not c else repr(c)

    def read_word(self, extra: str) -> str:
        start = self.pos
        text = self.text
        if self.pos < len(text) and text[self.pos].isascii() and text[self.pos].isalpha():
            self.pos += 1
            while (
                self.pos < len(text)
                and text[self.pos].isascii()
                and (text[self.pos].isalnum() or text[self.pos] in extra)
            ):
                self.pos += 1
        return text[start : self.pos]

    # ---- grammar

    def parse(self) -> Pipeline:
        steps = self.parse_list(0)
        self.skip_space()
        if self.pos < len(self.text):
            c = self.peek()
            if c == ")":
                raise self.error("unbalanced ')'")
            raise self.error(f"expected ',' between passes, found {self.found()}")
        return Pipeline(steps)

    def parse_list(self, depth: int) -> list[Step]:
        steps: list[Step] = []
        self.skip_space()
        if self.pos >= len(self.text) or self.peek() == ")":
            return steps
        while True:
            steps.append(self.parse_element(depth))
            self.skip_space()
            if self.peek() != ",":
                return steps
            self.pos += 1
            self.skip_space()

    def parse_element(self, depth: int) -> Step:
        start = self.pos
        name = self.read_word("-_")
        if not name:
            raise self.error(f"expected a pass name, found {self.found()}")
        info = None
        if name != REPEAT:
            info = self.registry.get(name)
            if info is None:
                raise self.error(f"unknown pass {name!r}", start, notes=self.registry.unknown_notes(name))
        options: list[_RawOption] | None = None
        self.skip_space()
        if self.peek() == "{":
            options = self.parse_options(name)
        self.skip_space()
        if info is not None:
            if self.peek() == "(":
                what = "bundle" if info.kind == "bundle" else "pass"
                hint = (
                    ""
                    if info.kind == "bundle"
                    else f"; options go in braces: {name}{{key=value other=value}}"
                )
                raise self.error(f"{what} {name!r} takes no nested pipeline{hint}")
            return self.make_step(info, start, options)
        if self.peek() != "(":
            raise self.error(f"{REPEAT} needs a nested pipeline: {REPEAT}{{max=3}}(fold,dce)")
        if depth + 1 > MAX_DEPTH:
            raise self.error(f"pipeline nests deeper than {MAX_DEPTH} levels")
        self.pos += 1
        body = self.parse_list(depth + 1)
        self.skip_space()
        if self.peek() != ")":
            raise self.error(f"expected ',' or ')' in the nested pipeline of {name!r}, found {self.found()}")
        self.pos += 1
        values = self.typed_options(REPEAT, (_REPEAT_MAX,), options or [])
        if values.get("max", DEFAULT_REPEAT) < 1:
            pos = next(o.value_pos for o in options or [] if o.key == "max")
            raise self.error(f"{REPEAT} option 'max' must be at least 1", pos)
        return RepeatStep(Pipeline(body), values.get("max", DEFAULT_REPEAT))

    def parse_options(self, name: str) -> list[_RawOption]:
        open_pos = self.pos
        self.pos += 1  # "{"
        options: list[_RawOption] = []
        while True:
            self.skip_space()
            c = self.peek()
            if c == "}":
                self.pos += 1
                return options
            if not c:
                raise self.error(f"unclosed '{{' in the options of {name!r}", open_pos)
            key_pos = self.pos
            key = self.read_word("-_")
            if not key:
                raise self.error(f"expected an option name in the options of {name!r}, found {self.found()}")
            if self.peek() != "=":
                raise self.error(f"option {key!r} of {name!r} needs a value: {key}=VALUE")
            self.pos += 1
            option = _RawOption(key, key_pos, value_pos=self.pos)
            option.items = self.parse_value()
            options.append(option)
            c = self.peek()
            if c and not c.isspace() and c != "}":
                raise self.error(
                    f"expected a space or '}}' after the value of option {key!r}, found {self.found()}"
                )

    def parse_value(self) -> list[RawItem]:
        """Reads ``item,item,...`` up to an unquoted space or ``}``."""
        items: list[RawItem] = []
        text = self.text
        if self.pos >= len(text) or text[self.pos].isspace() or text[self.pos] == "}":
            return items  # an empty value: empty list or empty string
        while True:
            start = self.pos
            if self.peek() == '"':
                items.append(RawItem(self.read_quoted(), True, start))
            else:
                while self.pos < len(text) and not text[self.pos].isspace() and text[self.pos] not in ',{}"':
                    self.pos += 1
                items.append(RawItem(text[start : self.pos], False, start))
                if self.peek() in ("{", '"'):
                    raise self.error(f"unexpected {self.found()} in an option value (quote the value)")
            if self.peek() != ",":
                return items
            self.pos += 1

    def read_quoted(self) -> str:
        open_pos = self.pos
        self.pos += 1
        out: list[str] = []
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c == "\\" and self.pos + 1 < len(text):
                out.append(text[self.pos + 1])
                self.pos += 2
            elif c == '"':
                self.pos += 1
                return "".join(out)
            else:
                out.append(c)
                self.pos += 1
        raise self.error("unclosed '\"' in an option value", open_pos)

    # ---- meaning

    def make_step(self, info: PassInfo, start: int, options: list[_RawOption] | None) -> Step:
        name = info.name
        if info.kind == "bundle":
            if options is not None:
                raise self.error(f"bundle {name!r} takes no options", start + len(name))
            return BundleStep(name)
        assert info.cls is not None
        specs = option_specs(info.cls)
        values = self.typed_options(name, specs, options or [])
        missing = [s for s in specs if s.required and s.name not in values]
        if missing:
            s = missing[0]
            raise self.error(f"pass {name!r} requires option {s.key!r} ({s.type_text()})", start + len(name))
        try:
            instance = info.cls(**values)
        except (TypeError, ValueError) as exc:
            raise self.error(f"invalid options for pass {name!r}: {exc}", start) from None
        return PassStep(instance)

    def typed_options(
        self, name: str, specs: tuple[OptionSpec, ...], options: list[_RawOption]
    ) -> dict[str, Any]:
        by_key = {s.key: s for s in specs}
        values: dict[str, Any] = {}
        for opt in options:
            spec = by_key.get(opt.key)
            if spec is None:
                raise self.error(
                    f"pass {name!r} has no option {opt.key!r}",
                    opt.key_pos,
                    notes=_option_notes(opt.key, specs),
                )
            if spec.name in values:
                raise self.error(f"option {opt.key!r} of pass {name!r} is given twice", opt.key_pos)
            try:
                values[spec.name] = spec.convert(opt.items, opt.value_pos)
            except OptionValueError as exc:
                raise self.error(f"pass {name!r} option {opt.key!r} {exc}", exc.pos) from None
        return values


def _option_notes(key: str, specs: tuple[OptionSpec, ...]) -> list[str]:
    if not specs:
        return ["it takes no options"]
    notes = []
    close = suggest(key, [s.key for s in specs])
    if close:
        notes.append("did you mean " + " or ".join(repr(c) for c in close) + "?")
    notes.append("its options: " + ", ".join(f"{s.key} ({s.type_text()})" for s in specs))
    return notes


__all__ = [
    "MAX_DEPTH",
    "BundleStep",
    "PassStep",
    "Pipeline",
    "PipelineParseError",
    "RepeatStep",
    "Step",
    "quote",
]

"""One config mechanism for params.yaml: typed dataclasses whose fields declare their rule once.

A section of params.yaml is a frozen dataclass deriving from :class:`Config`; each field is declared with
:func:`setting`, which stores its rule (choices, range) in the field's metadata, and its annotation is its
type. Every key is documented once, by its comment in params.yaml (``tests/test_params_doc.py`` keeps the
two in step), so the classes carry no meaning-comments. Building one checks every field (type, choices,
range; in :meth:`Config.__post_init__`), then the class's cross-key rules (:meth:`Config.check`);
:func:`from_mapping` also refuses unknown keys. Every error is a :class:`ConfigError` (a ValueError)
naming the full key, e.g. ``train.lr: must be > 0, got 0``.

Types: ``int`` refuses a bool and a float; ``float`` takes an int (stored as a float) and refuses nan/inf;
``list[X]`` checks each item (a rule's range applies to each item); ``dict`` takes a mapping;
``X | None`` takes None.

The top-level sections are :data:`SECTIONS`; :func:`load_params` refuses any other. Each stage reads the
sections it needs through their classes: ``read_section(load_params(), SynthConfig)``.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import os
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable, Mapping, TypeVar

import yaml

__all__ = ["SECTIONS", "ConfigError", "Rule", "setting", "Config", "BaseConfig", "from_mapping",
           "check_fields", "load_params", "run_stage", "read_section"]

# The top-level sections of params.yaml, one per config class (its ``section``): base BaseConfig (here),
# synth pipeline.synth.SynthConfig, prepare PrepareConfig (next to the dataset adapters), features
# pipeline.extract.ExtractConfig, train train.config.TrainConfig. A name table, not a class table, because
# pipeline/ must not import train/ (tests/test_params_doc.py checks that names and classes agree).
SECTIONS = ("base", "synth", "prepare", "features", "train")

C = TypeVar("C")


class ConfigError(ValueError):
    """A bad params value: ``str()`` is ``<section>.<key>: <reason>``."""

    def __init__(self, key: str, reason: str, section: str = ""):
        self.key, self.reason, self.section = key, reason, section
        super().__init__(f"{section}.{key}: {reason}" if section and key else f"{section or key}: {reason}")

    def __reduce__(self):  # pickles (e.g. from a worker process) with its parts
        return ConfigError, (self.key, self.reason, self.section)

    def within(self, section: str) -> "ConfigError":
        """The same error, naming ``section`` (e.g. ``train.method_params.resample_remix``) as its section."""
        return ConfigError(self.key, self.reason, section)


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a field's value may be beyond its type: one of ``choices`` (a tuple, or a callable returning the
    allowed values, for choices that come from a registry), and/or within ``min``..``max`` (each inclusive
    unless ``*_exclusive``); for a list, each item."""

    choices: tuple | Callable[[], Iterable] | None = None
    min: float | None = None
    max: float | None = None
    min_exclusive: bool = False
    max_exclusive: bool = False

    def allowed(self) -> tuple | None:
        if self.choices is None:
            return None
        return tuple(self.choices() if callable(self.choices) else self.choices)

    def problem(self, value) -> str | None:
        """Why ``value`` (already of the field's item type) breaks the rule, or None."""
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            return f"must be one of {' | '.join(map(str, allowed))}, got {value!r}"
        if self.min is not None and not (value > self.min if self.min_exclusive else value >= self.min):
            return f"must be {'>' if self.min_exclusive else '>='} {_show(self.min)}, got {_show(value)}"
        if self.max is not None and not (value < self.max if self.max_exclusive else value <= self.max):
            return f"must be {'<' if self.max_exclusive else '<='} {_show(self.max)}, got {_show(value)}"
        return None


def _show(x) -> str:
    """A number as params.yaml would write it (0.0 -> 0)."""
    return str(int(x)) if isinstance(x, float) and x.is_integer() and abs(x) < 1e15 else repr(x)


def setting(default: Any, *, choices: tuple | Callable[[], Iterable] | None = None, min: float | None = None,
            max: float | None = None, min_exclusive: bool = False, max_exclusive: bool = False) -> Any:
    """A config field with its default and its rule (see :class:`Rule`); a list or dict default is copied
    for each instance."""
    rule = Rule(tuple(choices) if choices is not None and not callable(choices) else choices,
                min, max, min_exclusive, max_exclusive)
    meta = {"rule": rule}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=functools.partial(copy.deepcopy, default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


class Config:
    """Base of the params.yaml config dataclasses (``@dataclasses.dataclass(frozen=True)`` subclasses).

    ``section`` names the section in error messages (``train``, ``train.method_params.pmr``). A subclass puts
    its cross-key rules in :meth:`check`, raising :class:`ConfigError` naming a key.
    """

    section: ClassVar[str] = ""

    def __post_init__(self) -> None:
        section = self.section or type(self).__qualname__
        for name, value in check_fields(self, section).items():
            object.__setattr__(self, name, value)
        try:
            self.check()
        except ConfigError as err:
            raise err.within(err.section or section) from None

    def check(self) -> None:
        """Cross-key rules (each field's own rule is already checked)."""

    @classmethod
    def from_params(cls: type[C], params: Mapping[str, Any]) -> C:
        """This class from its params.yaml section (a mapping), strictly: see :func:`from_mapping`."""
        return from_mapping(cls, params, cls.section or cls.__qualname__)


@dataclasses.dataclass(frozen=True)
class BaseConfig(Config):
    """The ``base`` section of params.yaml; every key is documented there."""

    section = "base"

    seed: int = setting(0, min=0)


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(hint) -> str:
    if isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def _coerce(value, hint, rule: Rule | None) -> tuple[Any, str | None]:
    """(``value`` converted to ``hint``, None) or (value, why it is not one)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return value, None
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(value, hint, rule)
    if hint is list or origin is list:
        return _coerce_list(value, hint, rule)
    if hint is dict or origin is dict:
        if not isinstance(value, Mapping):
            return value, f"expected a mapping, got {type(value).__name__} {value!r}"
        return dict(value), None
    if hint is float:
        if type(value) not in (int, float):
            return value, f"expected float, got {type(value).__name__} {value!r}"
        value = float(value)
        if not math.isfinite(value):
            return value, f"must be a finite number, got {value!r}"
    elif type(value) is not hint:  # exact: a bool is no int, an int no str
        return value, f"expected {_type_name(hint)}, got {type(value).__name__} {value!r}"
    return value, None if rule is None else rule.problem(value)


def _coerce_union(value, hint, rule: Rule | None) -> tuple[Any, str | None]:
    """``X | Y | None``: the first member type that accepts ``value``."""
    args = typing.get_args(hint)
    if value is None and type(None) in args:
        return value, None
    reasons = []
    for arg in (a for a in args if a is not type(None)):
        out, why = _coerce(value, arg, rule)
        if why is None:
            return out, None
        reasons.append(why)
    return value, reasons[0] if len(reasons) == 1 else f"expected {_type_name(hint)}, got {value!r}"


def _coerce_list(value, hint, rule: Rule | None) -> tuple[Any, str | None]:
    """``list[X]``: every item converted to X (the rule applies to each item)."""
    args = typing.get_args(hint)
    if not isinstance(value, (list, tuple)):
        return value, f"expected a list, got {type(value).__name__} {value!r}"
    items = []
    for i, item in enumerate(value):
        out, why = _coerce(item, args[0] if args else Any, rule)
        if why is not None:
            return value, f"item {i}: {why}"
        items.append(out)
    return items, None


def check_fields(obj, section: str) -> dict[str, Any]:
    """Check every field of dataclass instance ``obj`` against its type and :class:`Rule`; return the values
    that were converted (int -> float, tuple -> list), by field name. Raises :class:`ConfigError`."""
    hints = _hints(type(obj))
    changed = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        out, why = _coerce(value, hints[f.name], f.metadata.get("rule"))
        if why is not None:
            raise ConfigError(f.name, why, section)
        if out is not value:
            changed[f.name] = out
    return changed


def from_mapping(cls: type[C], mapping: Mapping[str, Any], section: str) -> C:
    """Build dataclass ``cls`` from a params.yaml section; a missing key takes its default.

    Raises :class:`ConfigError` (a ValueError) naming ``<section>.<key>`` for an unknown key, a wrong type,
    a value outside the field's rule, or a broken cross-key rule.
    """
    if mapping is None:
        mapping = {}
    if not isinstance(mapping, Mapping):
        raise ConfigError("", f"expected a mapping of keys, got {type(mapping).__name__} {mapping!r}", section)
    fields = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(mapping) - set(fields), key=str)
    if unknown:
        hints = [f"{k!r} -> {close[0]!r}?" for k in unknown
                 for close in [difflib.get_close_matches(str(k), fields, n=1)] if close]
        raise ConfigError("", f"unknown key(s) {unknown}; known: {sorted(fields)}"
                          + (f" (did you mean {', '.join(hints)})" if hints else "")
                          + "; see params.yaml for what each key means", section)
    try:
        obj = cls(**mapping)
        if not isinstance(obj, Config):  # a plain dataclass: its fields' types and rules, checked here
            for name, value in check_fields(obj, section).items():
                object.__setattr__(obj, name, value)
    except ConfigError as err:  # named by the class's own section: name the caller's (nested ones keep theirs)
        own = getattr(cls, "section", "") or cls.__qualname__
        raise (err.within(section) if err.section in (own, "") else err) from None
    return obj


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) that also reads YAML 1.2's floats without a dot, such as ``5e-05``, as
    floats: DVC (ruamel, YAML 1.2) writes a small float that way after ``dvc exp run -S train.lr=5.0e-05``,
    and YAML 1.1 would read it as the string ``'5e-05'``."""


ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))


def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    """Read params.yaml as a dict of sections (raw mappings); a section not in :data:`SECTIONS` fails.

    A relative ``path`` is read from the working folder, as DVC does: a missing one fails naming that folder
    and saying to run the stage from the project's folder (the one holding params.yaml and dvc.yaml)."""
    path = Path(path)
    if not path.is_file():
        here = Path(__file__).resolve().parents[1]
        project = f" ({here})" if (here / "dvc.yaml").is_file() else ""
        raise FileNotFoundError(f"{path} not found in {Path.cwd()}: run the stages from the project folder that "
                                f"holds params.yaml and dvc.yaml{project}, e.g. `cd {here if project else '<project>'}"
                                f" && dvc repro`")
    with open(path, encoding="utf-8") as f:
        params = yaml.load(f, Loader=ParamsLoader) or {}
    if not isinstance(params, dict):
        raise ValueError(f"{path}: expected a mapping of sections, got {type(params).__name__}")
    unknown = [s for s in params if s not in SECTIONS]
    if unknown:
        hints = [f"{s!r} -> {close[0]!r}?" for s in unknown
                 for close in [difflib.get_close_matches(str(s), SECTIONS, n=1)] if close]
        raise ValueError(f"{path}: unknown section(s) {unknown}; known: {list(SECTIONS)}"
                         + (f" (did you mean {', '.join(hints)})" if hints else ""))
    return params


def run_stage(name: str, main: Callable[[], Any], errors: tuple[type[BaseException], ...] = ()) -> None:
    """Run a stage's ``main``; an error of the user's (bad params or inputs: a ValueError, such as
    :class:`ConfigError`, an OSError such as a missing file, or one of ``errors``), whose message names the key
    or the file, ends the process with exit status 1 and the line ``<name>: error: <message>`` on stderr
    instead of a traceback (``AVREMIX_TRACEBACK=1`` keeps the traceback)."""
    try:
        main()
    except (ValueError, OSError, *errors) as err:
        if os.environ.get("AVREMIX_TRACEBACK"):
            raise
        sys.exit(f"{name}: error: {err}")


def read_section(params: Mapping[str, Any], cls: type[C]) -> C:
    """Section ``cls.section`` of ``params`` (from :func:`load_params`) as a ``cls``; a missing one fails."""
    if cls.section not in params:
        raise ConfigError("", f"missing section; params.yaml needs it (sections: {list(SECTIONS)})", cls.section)
    return from_mapping(cls, params[cls.section], cls.section)

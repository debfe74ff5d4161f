"""Components written as ``class_path`` + ``init_args`` (docs/training.md, "Components"; decision 23).

The agent takes its planner and its four phase losses as objects, the way LightningCLI injects optimizers: from a
config, jsonargparse builds them (a planner instance, a ``functools.partial`` of each loss class); from Python, a
user passes instances, classes or partials. Either way the agent's hyper-parameters, and so its checkpoints, must
hold plain values only (checkpoints load with ``torch.load(weights_only=True)``) from which
``EmotionAgent.load_from_checkpoint`` rebuilds the same components. :func:`to_config` writes a component as those
plain values, :func:`instantiate` builds it back; :class:`Configurable` records the arguments an instance was
constructed with, so that an instance can be written too.

A config is ``{"class_path": "package.module.Class", "init_args": {...}}``, nested wherever an argument is itself a
component (a value loss's ``target`` estimator), the form jsonargparse reads and ``--print_config`` prints.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
from collections.abc import Mapping
from typing import Any

__all__ = ["Configurable", "class_path", "instantiate", "locate", "to_config"]

PLAIN = (type(None), bool, int, float, str)

REMOVED_ARGUMENTS = {
    "emotion_rl.EmotionMCTS": ("completed_value",),
    "emotion_rl.GumbelRoot": ("chooses",),
    "emotion_rl.PUCTRoot": ("dirichlet_alpha", "dirichlet_fraction"),
    "emotion_rl.ValueLoss": ("target_tau",),
}
"""Arguments that lost their screen or were never measured and were removed (docs/results.md, "Options removed"),
by class: a config or checkpoint that still names one is refused with the converter's name."""
REMOVED_CLASSES = ("emotion_rl.TemperamentActionLoss", "emotion_rl.TDLambda", "emotion_rl.NStep")
"""Components removed whole, refused the same way."""


def _removed(what: str) -> ValueError:
    return ValueError(
        f'{what} was removed (docs/results.md, "Options removed"): drop it from the config; a checkpoint that holds '
        "it: python benchmarks/convert_checkpoint.py CHECKPOINT converts it, or says why it cannot"
    )


class Configurable:
    """A component that remembers the arguments it was constructed with, so :func:`to_config` can write it as
    ``class_path`` + ``init_args`` (a planner, a value estimator).

    The arguments are captured in ``__new__``, before any ``__init__`` runs, so a subclass needs no call of its own;
    :meth:`init_args` binds them to the class's signature, defaults filled in, and the repr is written from them.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Configurable:
        self = super().__new__(cls)
        object.__setattr__(self, "_constructed_with", (args, kwargs))  # also on torch modules, before their init
        return self

    def init_args(self) -> dict[str, Any]:
        """The constructor's arguments by name, defaults included (``**kwargs`` merged in)."""
        args, kwargs = self.__dict__.get("_constructed_with", ((), {}))
        bound = inspect.signature(type(self)).bind(*args, **kwargs)
        bound.apply_defaults()
        arguments: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            kind = bound.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                arguments.update(value)
            elif kind is inspect.Parameter.VAR_POSITIONAL:
                if value:
                    raise TypeError(f"{type(self).__name__}: positional *{name} cannot be written as init_args")
            else:
                arguments[name] = value
        return arguments

    def __repr__(self) -> str:
        """``Class(name=value, ...)`` from :meth:`init_args` (every argument, defaults included); the default repr
        when the arguments cannot be bound."""
        try:
            arguments = self.init_args()
        except TypeError:
            return object.__repr__(self)
        return f"{type(self).__name__}({', '.join(f'{name}={value!r}' for name, value in arguments.items())})"


def class_path(cls: type) -> str:
    """The shortest import path of ``cls``: the first parent package that exports it (``emotion_rl.ValueLoss``), as
    jsonargparse writes it, else ``module.QualifiedName``. Refused for a class no import can reach."""
    if "<locals>" in cls.__qualname__:
        raise TypeError(
            f"{cls.__qualname__} is defined inside a function, so a config cannot name it; define it at module level"
        )
    parts = cls.__module__.split(".")
    for end in range(1, len(parts)):
        module = sys.modules.get(".".join(parts[:end]))
        found: Any = module
        for name in cls.__qualname__.split("."):
            found = getattr(found, name, None)
        if found is cls:
            return f"{'.'.join(parts[:end])}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def locate(path: str) -> type:
    """The class at import path ``path`` (``"emotion_rl.ValueLoss"``, ``"mypackage.losses.MyLoss"``)."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:split])
        try:
            found: Any = importlib.import_module(module)
        except ModuleNotFoundError as error:  # only this prefix is not a module: try a shorter one
            if error.name and (module == error.name or module.startswith(f"{error.name}.")):
                continue
            raise
        try:
            for name in parts[split:]:
                found = getattr(found, name)
        except AttributeError:
            break
        if isinstance(found, type):
            return found
        break
    if path.startswith("emotion_rl.") and f"emotion_rl.{parts[-1]}" in REMOVED_CLASSES:
        raise _removed(f"class_path {path!r}")
    raise ValueError(f"class_path {path!r} does not name an importable class (check the spelling and the module)")


def _keyword_defaults(cls: type, given: Mapping[str, Any]) -> dict[str, Any]:
    """``given`` completed with the defaults of ``cls``'s other keyword parameters. Leading parameters without a
    default (a loss's ``model``, a value loss's ``gamma``) are the caller's: the factory is called with them."""
    parameters = inspect.signature(cls).parameters
    named = {n: p for n, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    unknown = set(given) - set(named)
    gone = sorted(unknown & set(REMOVED_ARGUMENTS.get(class_path(cls), ())))
    if gone:
        raise _removed(f"{class_path(cls)}'s argument {', '.join(gone)}")
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        raise ValueError(f"{class_path(cls)} has no argument {sorted(unknown)}; its arguments: {sorted(named)}")
    defaults = {n: p.default for n, p in named.items() if p.default is not p.empty}
    return {**defaults, **given}


def _factory_parts(obj: functools.partial) -> tuple[type, dict[str, Any]]:
    """The class and keyword arguments of a partial: ``functools.partial(cls, **kwargs)`` or the form jsonargparse
    gives a ``Callable[..., Class]`` argument (the class as the partial's last positional argument)."""
    func, args = obj.func, obj.args
    if isinstance(func, type) and not args:
        return func, dict(obj.keywords)
    if (
        not isinstance(func, type)
        and (getattr(func, "__module__", None) or "").startswith("jsonargparse")
        and args
        and isinstance(args[-1], type)
    ):
        return args[-1], dict(obj.keywords)
    raise TypeError(
        f"{obj!r}: only a functools.partial of a class with keyword arguments can be written as class_path + init_args"
    )


def to_config(obj: Any) -> Any:
    """``obj`` as plain values: a :class:`Configurable` instance, a class or a ``functools.partial`` of one becomes
    ``{"class_path", "init_args"}`` (recursively; a class or partial also lists the defaults of its other keyword
    arguments), a config dict is checked and completed the same way, lists and dicts are converted item by item,
    ``None``, booleans, numbers and strings stay. Anything else raises a ``TypeError`` naming it.
    """
    if isinstance(obj, PLAIN):
        return obj
    if isinstance(obj, Configurable):
        return {"class_path": class_path(type(obj)), "init_args": to_config(obj.init_args())}
    if isinstance(obj, type):
        return {"class_path": class_path(obj), "init_args": to_config(_keyword_defaults(obj, {}))}
    if isinstance(obj, functools.partial):
        cls, keywords = _factory_parts(obj)
        return {"class_path": class_path(cls), "init_args": to_config(_keyword_defaults(cls, keywords))}
    if isinstance(obj, Mapping) and "class_path" in obj:
        unknown = set(obj) - {"class_path", "init_args"}
        if unknown:
            raise ValueError(f"a component config holds class_path and init_args only, not {sorted(unknown)}")
        cls = locate(obj["class_path"])
        return {
            "class_path": class_path(cls),
            "init_args": to_config(_keyword_defaults(cls, obj.get("init_args") or {})),
        }
    if isinstance(obj, Mapping):
        return {str(key): to_config(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_config(value) for value in obj]
    raise TypeError(
        f"{obj!r} cannot be written as plain values for the hyper-parameters: give a class, a functools.partial of "
        "a class, an emotion_rl.config.Configurable instance, or its config (class_path + init_args)"
    )


def _build(value: Any) -> Any:
    """Nested configs become instances; lists and plain dicts are rebuilt item by item."""
    if isinstance(value, Mapping) and "class_path" in value:
        return instantiate(value)
    if isinstance(value, Mapping):
        return {key: _build(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_build(item) for item in value]
    return value


def instantiate(config: Mapping[str, Any], *args: Any) -> Any:
    """The component ``config`` describes: ``cls(*args, **init_args)``, nested configs among the init_args built
    first (the inverse of :func:`to_config`). ``args`` are the leading arguments the config leaves to the caller,
    e.g. ``instantiate(loss_config, model)``."""
    if not isinstance(config, Mapping) or "class_path" not in config:
        raise TypeError(f"not a component config (a mapping with class_path and init_args): {config!r}")
    cls = locate(config["class_path"])
    return cls(*args, **{key: _build(value) for key, value in (config.get("init_args") or {}).items()})

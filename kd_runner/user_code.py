"""Callables from the user's own code named by a dotted `_target_` path, as Hydra names them: networks
(`teacher.model`, `student.model`) and datasets (`dataset.factory`).

`call` imports the callable, passes the spec's other keys as arguments plus those the runner offers (e.g.
the dataset's `num_classes`) that the callable takes by name, and turns any failure into one line naming
the key. `source_digest` identifies the code, so a cache keyed on it notices an edit.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping

from kd_runner.errors import ConfigError, UserError, one_line
from kd_runner.store.files import sha256_file


def resolve(path: str, key: str) -> Callable:
    """The callable at dotted `path` (a module, then attributes); a ConfigError naming `key` otherwise."""
    parts = path.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and (module_name + ".").startswith(e.name + "."):
                continue  # this prefix is not a module: try a shorter one
            raise ConfigError(key, path, f"importing {module_name} failed ({one_line(e)})") from None
        except Exception as e:
            raise ConfigError(key, path, f"importing {module_name} failed ({one_line(e)})") from None
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            raise ConfigError(key, path, f"module {module_name} has no {'.'.join(parts[cut:])}") from None
        if not callable(obj):
            raise ConfigError(key, path, f"a callable (class or function); it is a {type(obj).__name__}")
        return obj
    raise ConfigError(key, path, "an importable dotted path module.callable (is its package on PYTHONPATH?)")


def source_digest(path: str | None, key: str) -> str | None:
    """sha256 of the source file that defines the callable at `path` (None for no path, or code without a file)."""
    if path is None:
        return None
    module = inspect.getmodule(resolve(path, key))
    file = getattr(module, "__file__", None)
    return sha256_file(file) if file else None


def call(spec: Mapping, key: str, offered: Mapping, through_kwargs: tuple[str, ...] = ()) -> object:
    """Call `spec["_target_"]` with `spec`'s other keys plus the `offered` arguments it takes by name (those
    in `through_kwargs` also through **kwargs); the spec's own keys win. A failure is one line naming `key`."""
    path = spec["_target_"]
    target = resolve(path, f"{key}._target_")
    kwargs = {**accepted(target, offered, through_kwargs), **{k: v for k, v in spec.items() if k != "_target_"}}
    try:
        return target(**kwargs)
    except Exception as e:
        raise UserError(f"{key}._target_={path} failed with arguments {kwargs}: {one_line(e)}") from None


def accepted(target: Callable, offered: Mapping, through_kwargs: tuple[str, ...] = ()) -> dict:
    """The entries of `offered` that `target` takes by parameter name (or through **kwargs, for the names
    in `through_kwargs`)."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: it gets only the user's arguments
        return {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return {k: v for k, v in offered.items() if k in params or (takes_any and k in through_kwargs)}

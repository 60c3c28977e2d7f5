"""Callables from the user's own code named by a dotted `_target_` path, as Hydra names them: networks
(`teacher.model`, `student.model`) and datasets (`dataset.factory`).

`call` imports the callable, passes the spec's other keys as arguments plus those the runner offers (e.g.
the dataset's `num_classes`) that the callable takes by name, and turns any failure into one line naming
the key. `source_digest` identifies the code (with the user's modules it imports), so a cache keyed on it
notices an edit.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import inspect
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path

from kd_runner.errors import ConfigError, UserError, one_line
from kd_runner.store.files import digest, sha256_file


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
    """A digest of the user's code behind the callable at `path`: the source of its module and of every module
    of the user's own code that it imports, transitively (None for no path, or code without a file). Module
    names, not file paths, label the sources, so the digest does not depend on where the code lives."""
    if path is None:
        return None
    module = inspect.getmodule(resolve(path, key))
    sources = user_sources(module.__name__) if getattr(module, "__file__", None) else {}
    return digest({name: sha256_file(file) for name, file in sorted(sources.items())}) if sources else None


def user_sources(root: str) -> dict[str, str]:
    """{module name: source file} of `root` and the user modules it imports, followed through their import
    statements (read, not executed); installed packages, the standard library and kd_runner are not followed."""
    found, todo = {}, [root]
    while todo:
        name = todo.pop()
        file = _user_file(name)
        if file is None or name in found:
            continue
        found[name] = file
        todo.extend(_imported(name, file))
    return found


def _user_file(name: str) -> str | None:
    """The .py file of module `name` when it is the user's own code (not installed, not kd_runner); an installed
    package is recognised by its top level, before anything of it would be imported."""
    top = name.split(".")[0]
    if top == "kd_runner" or _origin(top) is None:
        return None
    return _origin(name)


def _origin(name: str) -> str | None:
    """The source file of module `name` outside the Python installation, or None."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    origin = getattr(spec, "origin", None)
    if not origin or not origin.endswith(".py"):
        return None
    return None if any(origin.startswith(p + os.sep) for p in _installed_roots()) else origin


def _installed_roots() -> set[str]:
    """The standard library and every site-packages folder on the path (venvs, user site, .pth-added ones)."""
    stdlib = {sysconfig.get_path(k) for k in ("stdlib", "platstdlib")}
    sites = {p for p in sys.path if os.path.basename(p.rstrip(os.sep)) in ("site-packages", "dist-packages")}
    return {p for p in stdlib | sites if p}


def _imported(name: str, file: str) -> list[str]:
    """The modules `file` (module `name`) imports, relative imports resolved; `from m import x` also names
    m.x, in case x is a submodule."""
    package = name if file.endswith("__init__.py") else name.rpartition(".")[0]
    names = []
    for node in ast.walk(ast.parse(Path(file).read_bytes())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else node.module
            )
            names += [base, *(f"{base}.{alias.name}" for alias in node.names)]
    return names


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


def blamed(exc: BaseException, targets: Mapping[str, str]) -> BaseException:
    """`exc` as one line naming the setting whose code raised it (a model that fails only in training, a
    dataset item that cannot be read) when it was raised in the user's code of `targets` ({key: dotted
    path}): the innermost frame of that code or of kd_runner's is the user's. Otherwise `exc` itself."""
    if isinstance(exc, UserError) or not isinstance(exc, Exception) or not targets:
        return exc
    owners = {
        os.path.realpath(file): key
        for key, path in targets.items()
        for file in user_sources(inspect.getmodule(resolve(path, f"{key}._target_")).__name__).values()
    }
    ours = os.path.dirname(os.path.realpath(__file__)) + os.sep
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        file = os.path.realpath(frame.filename)
        if file in owners:
            key = owners[file]
            where = f"{frame.filename}, line {frame.lineno}, in {frame.name}"
            return UserError(f"{key}._target_={targets[key]} raised {one_line(exc)} ({where}): fix the code there")
        if file.startswith(ours):
            return exc
    return exc

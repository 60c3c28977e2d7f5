"""Callables from the user's own code named by a dotted `_target_` path, as Hydra names them: networks
(`teacher.model`, `student.model`), datasets (`dataset.factory`), a soft term (`distill.objective`),
optimizers and schedules (`STAGE.optimizer`, `STAGE.scheduler`).

A node is instantiated by the function it is bound to (`Target`): kd-run's CLI binds every node to Hydra's
own `hydra.utils.instantiate` (`_partial_`, `_args_`, nested `_target_` nodes, `_recursive_`, `_convert_`);
this package does not import Hydra. An unbound node (a plain dict, e.g. a config built in Python) is its
target called with its keys. `partial` gives the callable with the node's arguments, `call` calls it with
those the runner offers (e.g. the dataset's `num_classes`) that it takes by name; a failure is one line
naming the key. `source_digest` identifies the code (with the user's modules it imports), so a cache keyed
on it notices an edit.
"""

from __future__ import annotations

import ast
import functools
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

Instantiate = Callable[..., object]  # hydra.utils.instantiate's signature: (node, *args, **kwargs)
HYDRA_KEYS = ("_partial_", "_args_", "_recursive_", "_convert_")  # what only Hydra's instantiate reads


class Target(dict):
    """A `_target_` node (its keys as the user wrote them) bound to the function that instantiates it, e.g.
    Hydra's `instantiate`. Unbound, it is the plain dict: so is the copy `dataclasses.asdict` makes of it
    (result.json, digests, the printed config)."""

    def __new__(cls, node=(), instantiate: Instantiate | None = None):
        return dict(node) if instantiate is None else super().__new__(cls)

    def __init__(self, node=(), instantiate: Instantiate | None = None):
        super().__init__(node)
        self.instantiate = instantiate

    def __reduce__(self):  # pickled (a parallel launcher's worker) and deep-copied with its binding
        return Target, (dict(self), self.instantiate)


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


def call(spec: Mapping, key: str, offered: Mapping, through_kwargs: tuple[str, ...] = (), args: tuple = ()) -> object:
    """What `spec` builds: its target with `args` first (e.g. an optimizer's parameters), its own arguments,
    and the `offered` ones it takes by name and `spec` does not set (those in `through_kwargs` also through
    **kwargs). A failure is one line naming `key`."""
    target = resolve(spec["_target_"], f"{key}._target_")
    kwargs = {k: v for k, v in accepted(target, offered, through_kwargs).items() if k not in spec}
    bound = partial(spec, key)
    return _guarded(lambda: bound(*args, **kwargs), spec, key, kwargs)


def partial(spec: Mapping, key: str) -> Callable:
    """The callable `spec` names with its own arguments bound (Hydra's `_partial_` semantics: nested nodes
    instantiated now), for the arguments the runner gives later (an optimizer's parameters, a soft term's
    logits). One line naming `key` if the node cannot be instantiated."""
    instantiate = getattr(spec, "instantiate", None) or _direct
    convert = {} if "_convert_" in spec else {"_convert_": "all"}  # plain lists and dicts, as the node wrote them
    return _guarded(lambda: instantiate(dict(spec), _partial_=True, **convert), spec, key)


def _direct(node: Mapping, _partial_: bool = True, _convert_: str = "all") -> Callable:
    """An unbound node: its target with its keys (Hydra's own keys and nested nodes are refused in one line)."""
    nested = [k for k, v in node.items() if isinstance(v, Mapping) and "_target_" in v]
    used = [k for k in HYDRA_KEYS if k in node] + nested
    if used:
        raise ValueError(f"{', '.join(used)} need Hydra's instantiate: build the config through kd-run")
    target = resolve(node["_target_"], "_target_")
    return functools.partial(target, **{k: v for k, v in node.items() if k != "_target_"})


def _guarded(make: Callable[[], object], spec: Mapping, key: str, given: Mapping = {}) -> object:  # noqa: B006
    """`make()`; an exception (Hydra wraps the user's in its own) is one line naming `key` and the arguments."""
    try:
        return make()
    except UserError:
        raise
    except Exception as e:
        cause = e.__cause__ if type(e).__name__ == "InstantiationException" and e.__cause__ else e
        shown = {**{k: v for k, v in spec.items() if k != "_target_"}, **given}
        raise UserError(f"{key}._target_={spec['_target_']} failed with arguments {shown}: {one_line(cause)}") from None


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

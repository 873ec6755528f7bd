"""Named choices of a config group (solver, data, partition, topology, model, classifier).

One Registry per group is the single source of that group's options: config validation, `semdl --help`, dispatch
and the tests read it. An option is a name, the object that implements it (a class or a function) and, for the
groups whose options have their own keys, a config dataclass: its fields are the option's keys, its defaults are
the only place those defaults are written, and registering it makes `group=name` composable by Hydra.

Options come from three places, all equal once registered:
- semdl's own modules, with the `register` decorator;
- installed packages, through the Python entry point group `semdl.<group>` (name = "module:object");
- a YAML file on Hydra's search path whose `_target_` names the object ("package.module.Object"), for a user's
  own module; its other keys are checked against the object's config dataclass.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, fields, is_dataclass
from importlib import import_module
from importlib.metadata import entry_points
from typing import Any, Callable, Generic, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from semdl.errors import UserError

T = TypeVar("T")
TARGET = "_target_"


@dataclass(frozen=True)
class Option(Generic[T]):
    """One registered choice: its name, what implements it, and its config dataclass (None: no keys of its own)."""

    name: str
    value: T
    config: Any | None  # a dataclass instance: the option's keys with their defaults


class Registry(Generic[T]):
    """The options of one config group, by name."""

    def __init__(self, group: str, describe: str):
        self.group = group
        self.describe = describe  # what an option is, for messages: "solver", "dataset", ...
        self._options: dict[str, Option[T]] = {}
        self._entry_points_loaded = False

    def register(self, name: str, config: type | None = None, **defaults: Any) -> Callable[[T], T]:
        """Decorator: register `value` as option `name`, with `config` its keys (a dataclass with a `name` field)
        and `defaults` the values this option gives some of them instead of the dataclass's."""

        def add(value: T) -> T:
            self._add(name, value, config, _registered_by_semdl(), defaults)
            return value

        return add

    def add(self, name: str, value: T, config: type | None = None, **defaults: Any) -> None:
        self._add(name, value, config, _registered_by_semdl(), defaults)

    def _add(self, name: str, value: T, config: type | None, own: bool, defaults: dict[str, Any]) -> None:
        """Register `value`; `own`: semdl's own option (typed in ConfigStore), not a user's (see _config_node)."""
        if name in self._options and self._options[name].value is not value:
            raise ValueError(f"{self.describe} {name!r} is registered twice")
        instance = None
        if config is not None:
            _check_config(config, f"the config of {self.describe} {name!r}")
            instance = config(name=name, **defaults)
            ConfigStore.instance().store(group=self.group, name=name, node=_config_node(instance, own))
        self._options[name] = Option(name, value, instance)
        if not own and _package(value):
            PLUGIN_PACKAGES.add(_package(value))

    def _load_entry_points(self) -> None:
        """Register the options that installed packages declare under the entry point group semdl.<group>."""
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for point in entry_points(group=f"semdl.{self.group}"):
            if point.name in self._options:
                continue
            PLUGIN_PACKAGES.add(point.module.split(".")[0])
            try:
                value = point.load()
            except (Exception, SystemExit) as error:  # a broken plugin must not hide semdl's own options
                raise UserError(
                    f"the {self.describe} {point.name!r} of entry point {point.value} cannot be imported: "
                    f"{_import_failure(error)}"
                ) from None
            self._add(point.name, value, getattr(value, "Config", None), False, {})

    def names(self) -> list[str]:
        self._load_entry_points()
        return list(self._options)

    def __contains__(self, name: str) -> bool:
        return name in self.names()

    def get(self, name: str, key: str | None = None) -> Option[T]:
        """The option called `name`; an unknown name is one line listing the choices (`key` names the config key)."""
        self._load_entry_points()
        if name not in self._options:
            raise UserError(
                f"unknown {self.describe} {name!r} in {key or self.group}; choose one of: {', '.join(self._options)}"
            )
        return self._options[name]

    def adopt(self, name: str, target: str) -> None:
        """A user's `<group>/<name>.yaml` names `target`: import it before Hydra composes, so that a decorator in its
        module registers it. An object no decorator registered (a `Config` attribute gives its keys) is this
        command's option `name` (forget_adopted): the groups that select by name (`model.per_node`,
        `eval.classifiers`) find it, and Hydra learns its keys, so that the YAML file is merged with every key of the
        option and an override of a key the file does not set composes."""
        value = _import_target(self.group, target)
        if name in self._options or any(option.value is value for option in self._options.values()):
            return
        config = getattr(value, "Config", None)
        if config is not None:
            _check_config(config, f"{self.group}._target_={target}: its Config")
        self._options[name] = Option(name, value, config(name=name) if config is not None else None)
        store = ConfigStore.instance()
        stored = config is not None and f"{name}.yaml" not in store.repo.get(self.group, {})
        if stored:
            store.store(group=self.group, name=name, node=_config_node(config(name=name), own=False))
        ADOPTED.append((self, name, stored))

    def resolve(self, options: DictConfig) -> Option[T]:
        """The option a composed config group node selects: its `_target_` when present, else its `name`."""
        target = options.get(TARGET) if isinstance(options, DictConfig) else None
        if target is None:
            return self.get(options.name, self.group)
        value = _import_target(self.group, str(target))
        name = options.get("name", target)
        # An object registered by the decorator (or `add`) of a module the YAML's import ran: its keys are the ones
        # it was registered with, even where it inherits another option's `Config` (a Tracker subclass).
        registered = next((option for option in self._options.values() if option.value is value), None)
        if registered is not None and registered.config is not None:
            return Option(name, value, registered.config)
        config = getattr(value, "Config", None)
        if config is not None:
            _check_config(config, f"{self.group}._target_={target}: its Config")
        return Option(name, value, config(name=name) if config is not None else None)

    def keys(self, options: DictConfig) -> list[str]:
        """The keys the selected option takes (its config's fields, or what its YAML file sets)."""
        config = self.resolve(options).config
        return (
            [field.name for field in fields(config)]
            if config is not None
            else [key for key in options if key != TARGET]
        )

    def settings(self, options: DictConfig) -> Any:
        """The selected option's keys as its typed config (defaults filled in); unknown keys and wrong types are one
        line each."""
        option = self.resolve(options)
        own = {key: value for key, value in OmegaConf.to_container(options, resolve=True).items() if key != TARGET}
        if option.config is None:
            return OmegaConf.create(own)
        try:
            return OmegaConf.merge(OmegaConf.structured(option.config), own)
        except OmegaConfBaseException as error:
            key = getattr(error, "key", None)
            known = [field.name for field in fields(option.config)]
            if key is not None and key not in known:
                raise UserError(
                    f"{self.group}.{key} is not a key of {self.group}={option.name}; its keys are: {', '.join(known)}"
                ) from None
            raise UserError(f"{self.group}: {_first_line(error)}") from None


# The top-level packages (or modules) of the options from outside semdl: an entry point's, a `_target_`'s, one
# registered by a module outside semdl. What they raise, or a sys.exit they call, is said naming their file.
PLUGIN_PACKAGES: set[str] = set()


def _package(value: Any) -> str:
    return str(getattr(value, "__module__", "") or "").split(".")[0]


def plugin_failure(error: BaseException) -> UserError | None:
    """The one line, naming the file and line, for what an option from outside semdl did while it ran: called
    sys.exit (a plugin cannot end the command silently, nor with a status of its own), or raised an exception that
    semdl would otherwise report as a bug of its own. None when the error did not come from such an option's code,
    or explains itself (a UserError, a stop signal, out of memory, a fault of the environment)."""
    from semdl.errors import EXPLAINED, is_out_of_memory

    if isinstance(error, EXPLAINED) or is_out_of_memory(error) or getattr(error, "errno", None) is not None:
        return None
    frame, line = None, None
    trace = error.__traceback__
    while trace is not None:  # the innermost frame: where it was raised, or where sys.exit was called
        frame, line, trace = trace.tb_frame, trace.tb_lineno, trace.tb_next
    package = "" if frame is None else str(frame.f_globals.get("__name__", "")).split(".")[0]
    if frame is None or package not in PLUGIN_PACKAGES or package == "semdl":
        return None
    where = f"{frame.f_code.co_filename}, line {line}"
    if isinstance(error, SystemExit):
        return UserError(
            f"{where}: an option's code called sys.exit({error.code!r}); an option reports a problem by raising "
            "semdl.errors.UserError"
        )
    return UserError(f"{where}: an option's code raised {type(error).__name__}: {_first_line(error)}")


# The options `adopt` made for the command running now (registry, name, whether it added a ConfigStore entry);
# `forget_adopted` removes them when it ends, so that a later command in the same process (the tests drive many)
# sees only its own YAML files.
ADOPTED: list[tuple[Registry, str, bool]] = []


def forget_adopted() -> None:
    repo = ConfigStore.instance().repo
    while ADOPTED:
        registry, name, stored = ADOPTED.pop()
        registry._options.pop(name, None)
        if stored:
            repo.get(registry.group, {}).pop(f"{name}.yaml", None)


def _import_target(group: str, target: str) -> Any:
    """The object a `_target_` names ("package.module.Object"); failing to import it is one line."""
    module_name, _, attribute = target.rpartition(".")
    if module_name:
        PLUGIN_PACKAGES.add(module_name.split(".")[0])
    try:
        return getattr(import_module(module_name), attribute)
    except (Exception, SystemExit) as error:  # whatever the user's module does while importing is reported
        hint = " (is its folder on PYTHONPATH, or its package installed?)" if isinstance(error, ImportError) else ""
        raise UserError(f"{group}._target_={target} cannot be imported: {_import_failure(error)}{hint}") from None


def _import_failure(error: BaseException) -> str:
    """What stopped a plugin's import, in a few words: its exception, or the sys.exit it called, with the file and
    line where it happened."""
    if isinstance(error, SystemExit):
        what = f"it called sys.exit({error.code!r})"
    elif isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} ({error.filename}, line {error.lineno})"
    else:
        what = f"{type(error).__name__}: {_first_line(error)}"
    frames = traceback.extract_tb(error.__traceback__)
    own = [frame for frame in frames if "importlib" not in frame.filename and frame.filename != __file__]
    return f"{what} ({own[-1].filename}, line {own[-1].lineno})" if own else what


def _check_config(config: Any, what: str) -> None:
    """An option's config must be a dataclass with a `name` field (the option's name, which selects it)."""
    if not is_dataclass(config) or "name" not in {field.name for field in fields(config)}:
        module = str(getattr(config, "__module__", "") or "")
        where = getattr(sys.modules.get(module), "__file__", None) or module or "?"
        raise UserError(f"{what} ({where}) must be a dataclass with a `name` field")


def _registered_by_semdl() -> bool:
    """Whether the code registering an option (the first caller outside this module) is semdl's own module."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame = frame.f_back
    return frame is not None and str(frame.f_globals.get("__name__", "")).split(".")[0] == "semdl"


def _config_node(instance: Any, own: bool) -> Any:
    """What ConfigStore holds for an option: semdl's own options as their typed dataclass; an option registered
    outside semdl (even with one of semdl's dataclasses, as a new encoder with ModelConfig) as plain keys. Hydra
    validates a YAML file on the search path against a ConfigStore entry of the same group and name, so a user's
    `<group>/<name>.yaml` with `_target_` beside their registered dataclass would be refused ("Key '_target_' not in
    ..."); as plain keys it merges, and `Registry.settings` checks every key against the dataclass all the same."""
    if own:
        return instance
    return OmegaConf.to_container(OmegaConf.structured(instance))


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

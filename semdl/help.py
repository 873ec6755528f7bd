"""`semdl train --help`: Hydra's help page (header, config groups, footer) whose composed config gives each key
its one-line description. A key's description is the trailing comment of the dataclass field that types it: the
run-wide keys' in semdl/schema.py, a config group's keys' in its option's config dataclass."""

from __future__ import annotations

import ast
import inspect
import io
import string
import textwrap
import tokenize
from dataclasses import is_dataclass
from functools import partial
from typing import Any

from hydra import initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.object_type import ObjectType
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from semdl.composition import CONFIG_MODULE, SEARCHPATH, compose_job, hydra_error_line, load_registries, search_path
from semdl.errors import UserError
from semdl.options import registries
from semdl.registry import Registry

COMMENT_COLUMN = 40  # a longer line (a path, an interpolation) keeps its comment two spaces after it


def train_help(overrides: list[str], config_dir: str | None = None) -> str:
    """The help page of `semdl train [overrides]`: the config composed with the overrides, each key described."""
    load_registries()  # the schema and every option's keys, before composing
    search = search_path(config_dir)
    overrides = ([] if any(item.startswith(SEARCHPATH) for item in overrides) else search) + overrides
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3", job_name="semdl"):
            cfg = compose_job(overrides, return_hydra_config=True)
            groups = config_group_options(overrides)
    except (HydraException, OmegaConfBaseException) as error:
        raise UserError(hydra_error_line(error)) from None
    template = string.Template(cfg.hydra.help.template)
    with read_write(cfg), open_dict(cfg):
        del cfg["hydra"]  # the job's config, as Hydra's help prints it
    descriptions = config_descriptions(cfg)
    for group, options in groups.items():
        # The options are listed from the config groups themselves (every registered option has one), so no
        # hand-written comment can name only some of them.
        path = f"{group}.name"
        if path in descriptions:
            descriptions[path] += f" (one of: {', '.join(options)})"
    lines = "".join(f"{group}: {', '.join(options)}\n" for group, options in groups.items())
    return template.safe_substitute(APP_CONFIG_GROUPS=lines, CONFIG=annotated_yaml(cfg, descriptions))


# Config groups users do not choose: solver_settings holds the presets' per-solver keys, which experiment=<preset>
# selects by itself.
INTERNAL_GROUPS = ("hydra", "solver_settings")


def config_group_options(overrides: list[str]) -> dict[str, list[str]]:
    """Every config group a user chooses from, with its options, sorted, as Hydra's own help lists them."""
    loader = GlobalHydra.instance().config_loader()
    options = partial(loader.get_group_options, config_name="config", overrides=overrides)
    groups = sorted(group for group in options("", results_filter=ObjectType.GROUP) if group not in INTERNAL_GROUPS)
    return {group: sorted(options(group)) for group in groups}


def config_descriptions(cfg: DictConfig) -> dict[str, str]:
    """Each described key of a composed config, by dotted path (`train.rounds`): the trailing comment of the field
    that types it. A group whose option has no config dataclass (a user's `_target_` without `Config`) and the
    fields without a comment have none."""
    groups = registries()
    descriptions = {}

    def describe(node: DictConfig, prefix: str, typed_by: type | None) -> None:
        own = field_descriptions(typed_by) if typed_by is not None else {}
        for key in node:
            path = f"{prefix}{key}"
            if own.get(key):
                descriptions[path] = own[key]
            if OmegaConf.is_missing(node, key) or OmegaConf.is_interpolation(node, key):
                continue
            child = node[key]
            if isinstance(child, DictConfig):
                describe(child, f"{path}.", config_class(child, groups.get(path)))

    describe(cfg, "", config_class(cfg, None))
    return descriptions


def config_class(node: DictConfig, registry: Registry | None) -> type | None:
    """The dataclass that types a config node: its structured type, or for a config group's node whose option comes
    from a `_target_`, that option's config dataclass."""
    node_type = OmegaConf.get_type(node)
    if is_dataclass(node_type):
        return node_type
    option = registry.resolve(node) if registry is not None else None
    return type(option.config) if option is not None and option.config is not None else None


def field_descriptions(cls: type) -> dict[str, str]:
    """Each field's trailing comment in the source of a dataclass and of its dataclass bases, by field name; for a
    field written over several lines, the first comment at the end of one of them. A class whose source cannot be
    read (built at run time) has none."""
    descriptions: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if is_dataclass(klass):
            descriptions.update(_own_field_comments(klass))
    return descriptions


def _own_field_comments(cls: type) -> dict[str, str]:
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    source_lines = source.splitlines()
    trailing = {  # line number: the comment that ends a line of code
        token.start[0]: token.string.lstrip("#").strip()
        for token in tokenize.generate_tokens(io.StringIO(source).readline)
        if token.type == tokenize.COMMENT and source_lines[token.start[0] - 1][: token.start[1]].strip()
    }
    comments = {}
    for statement in ast.parse(source).body[0].body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            lines = range(statement.lineno, statement.end_lineno + 1)
            comment = next((trailing[line] for line in lines if line in trailing), None)
            if comment:
                comments[statement.target.id] = comment
    return comments


def annotated_yaml(cfg: DictConfig, descriptions: dict[str, str]) -> str:
    """The config as Hydra prints it (unresolved), each described key's line followed by `# its description`. The
    comments start in one column, after the longest described line that is not longer than COMMENT_COLUMN."""
    lines = _described_lines(OmegaConf.to_container(cfg, resolve=False), descriptions, "")
    width = max((len(line) for line, text in lines if text and len(line) <= COMMENT_COLUMN), default=0)
    return "".join(f"{line.ljust(width)}  # {text}\n" if text else f"{line}\n" for line, text in lines)


def _described_lines(mapping: dict[str, Any], descriptions: dict[str, str], prefix: str) -> list[tuple[str, str]]:
    """Each YAML line of `mapping` with the description of the key it starts ("" for the lines of a list)."""
    lines = []
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            lines.append((f"{key}:", descriptions.get(path, "")))
            lines += [("  " + line, text) for line, text in _described_lines(value, descriptions, f"{path}.")]
        else:
            first, *rest = OmegaConf.to_yaml({key: value}).splitlines()
            lines += [(first, descriptions.get(path, "")), *((line, "") for line in rest)]
    return lines

"""The edge every job goes through (``python -m jobs.<name> key=value …``), written once.

Hydra composes ``conf/<config>.yaml`` over the job's schema (a dataclass registered in Hydra's ConfigStore: every
key and its default is written there, the YAML files only choose and override), the job's typed spec is built from
the composed config once, and the job runs on the spec. Exit status, the same for every job: 0 done; 1 some items
failed (each named in the log); 2 refused before any work, in one line: a key or group option that does not exist
(with a "did you mean"), a value of the wrong type or out of range, a missing required value, inputs the job cannot
use; 130 interrupted. ``--cfg job`` prints the config resolved.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import logging
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generic, NoReturn, TypeVar

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import MissingConfigException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, OmegaConfBaseException

from jobs.redaction import SECRET_KEYS, scrub, secret_values
from pipeline.records import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_REFUSED
from pipeline.specs import SpecError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

S = TypeVar("S")


@dataclass(frozen=True)
class Job(Generic[S]):
    """One entry point: ``conf/{config}.yaml`` over ``schema``; ``run`` takes the spec and returns the exit status
    (raising ``SpecError`` refuses with exit 2). The spec is the schema's dataclass built from the composed config
    (its checks run then), or what ``build`` makes of the composed config."""

    name: str  # as in python -m jobs.<name>
    config: str  # conf/<config>.yaml
    schema: type
    run: Callable[[S], int]
    build: Callable[[DictConfig], S] | None = None

    def register(self) -> None:
        """Store the schema in Hydra's ConfigStore as ``{config}_schema`` (the first entry of the config's
        defaults list)."""
        ConfigStore.instance().store(name=f"{self.config}_schema", node=self.schema)

    def spec(self, cfg: DictConfig) -> S:
        """The typed spec of a composed config; any configuration error is raised as a one-line SpecError."""
        try:
            _check_keys(cfg, "")
            return self.build(cfg) if self.build else OmegaConf.to_object(cfg)
        except SpecError:
            raise
        except OmegaConfBaseException as exc:
            raise SpecError(_omegaconf_line(exc)) from exc

    def main(self) -> NoReturn:
        """Run the job under Hydra with the command line's overrides and exit with its status; a configuration
        error Hydra finds while composing (an unknown key or group option, a malformed override, a value of the
        wrong type) exits 2 with one line."""
        self.register()
        if {"--cfg", "-c"} & set(sys.argv) and "--resolve" not in sys.argv:
            sys.argv.append("--resolve")
        worst = [EXIT_OK]  # of the sweep points run by this process (multirun)

        @functools.wraps(self.run)  # Hydra names the job (and its log file) after the job's module
        def task(cfg: DictConfig) -> None:
            status = self._task(cfg)
            if HydraConfig.get().mode == RunMode.MULTIRUN:  # the other sweep points run; exit with the worst
                worst[0] = max(worst[0], status)
                return
            sys.exit(status)

        hydra_main = hydra.main(config_path=str(CONF_DIR), config_name=self.config, version_base="1.3")(task)
        full_error = os.environ.get("HYDRA_FULL_ERROR")
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors to us instead of printing and exiting 1
        try:
            hydra_main()
        except Exception as exc:  # noqa: BLE001 - Hydra's own: composition, overrides, config files
            message = scrub(config_error(exc, self.config), _command_line_secrets(sys.argv[1:]))
            print(f"jobs.{self.name}: {message}", file=sys.stderr)
            sys.exit(EXIT_REFUSED)
        finally:
            if full_error is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = full_error
        sys.exit(worst[0])

    def _task(self, cfg: DictConfig) -> int:
        log = logging.getLogger(f"jobs.{self.name}")
        secrets = secret_values(OmegaConf.to_container(cfg, resolve=False))
        try:
            return self.run(self.spec(cfg))
        except SpecError as exc:
            log.error("%s", scrub(str(exc), secrets).splitlines()[0])
            return EXIT_REFUSED
        except KeyboardInterrupt:
            log.error("interrupted; re-run the same command")
            return EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - one line for the user, the traceback (scrubbed) in the job log
            log.debug("%s", scrub(traceback.format_exc(), secrets))
            log.error("%s failed: %s", self.name, scrub(f"{type(exc).__name__}: {exc}", secrets).splitlines()[0])
            return EXIT_FAILED


def _did_you_mean(word: str, candidates: list[str], what: str) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {what}{close[0]}?)" if close else ""


def _check_keys(node: DictConfig, path: str) -> None:
    """Every key of a schema's node is one of its fields: a key added with ``+`` where the schema has none is
    refused, not silently dropped (dict-typed fields, like ``session``, take any key)."""
    schema = OmegaConf.get_type(node)
    known = [f.name for f in dataclasses.fields(schema)] if dataclasses.is_dataclass(schema) else None
    for key in node.keys():
        where = f"{path}{key}"
        if known is not None and key not in known:
            raise SpecError(f"{where}: no such key{_did_you_mean(str(key), known, path)}")
        child = None if OmegaConf.is_missing(node, key) else node[key]
        if isinstance(child, DictConfig):
            _check_keys(child, f"{where}.")


def _omegaconf_line(exc: OmegaConfBaseException) -> str:
    """One line for an error OmegaConf found in a composed config: the key, then what is wrong."""
    key = getattr(exc, "full_key", None) or ""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, MissingMandatoryValue):
        return f"{key}: missing value (give {key}=...)"
    return f"{key}: {reason}" if key else reason


def config_error(exc: BaseException, config: str) -> str:
    """One line for an error Hydra raised while composing ``config``, naming the override; for a key or group
    option that does not exist, the nearest existing one."""
    text = str(exc)
    first = text.splitlines()[0] if text else type(exc).__name__
    if isinstance(exc, OverrideParseException):
        return f"{exc.override}: cannot parse this override (quote a value with special characters: key='...')"
    if isinstance(exc, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", text)
        if found and "/" in found.group(1):
            group, _, option = found.group(1).rpartition("/")
            options = list(exc.options or [])
            return (f"{group}={option}: no such option in conf/{group}/{_did_you_mean(option, options, f'{group}=')}"
                    f"; options: {', '.join(options)}")
        return f"{first}" if found else f"conf/{config}.yaml: {first}"
    if first.startswith("Unexpected type"):  # Hydra setting a key under a null value
        return _under_null(config, _overrides()) or "an override sets a key under a null value"
    cause = exc.__cause__
    override = re.search(r"(?:override|overriding) '?([^'\s]+?)'?\.?$", first)
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or (override.group(1) if override else "")
        reason = str(cause).splitlines()[0]
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            parent = getattr(cause, "parent_node", None)
            name = str(getattr(cause, "key", key.rpartition(".")[2]))
            siblings = [str(k) for k in parent.keys()] if isinstance(parent, DictConfig) else []
            where = key.rpartition(".")[0]
            hint = _did_you_mean(name, siblings, where + '.' if where else '')
            if not hint and "." in key:
                under_null = _under_null(config, [o for o in _overrides() if o.lstrip("+").startswith(f"{key}=")])
                if under_null:
                    return under_null
            return f"{key}: no such key{hint or f' (to add one: +{key}=...)'}"
        if "is not Optional" in reason:
            return f"{key}=null: a value is required (null is not allowed here)"
        what = override.group(1) if override else key
        return f"{what}: {reason}"
    return first


def _overrides() -> list[str]:
    return [a for a in sys.argv[1:] if not a.startswith("-")]


def _under_null(config: str, overrides: list[str]) -> str | None:
    """The line for an override among ``overrides`` that sets a key under a null value (found by composing the
    config with the command line's group choices only), saying what to do instead; None when there is none."""
    choices = [o for o in _overrides() if "=" in o and "." not in o.partition("=")[0] and not o.startswith(("+", "~"))]
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(config, overrides=choices)
    for override in overrides:
        parts = override.partition("=")[0].lstrip("+").split(".")
        for depth in range(1, len(parts)):
            parent = ".".join(parts[:depth])
            if OmegaConf.select(cfg, parent, throw_on_missing=False) is None:
                return (f"{'.'.join(parts)}: {parent} is null here: give it whole ({parent}={{key: value}}) or choose "
                        f"the group option that fills it")
    return None


def _command_line_secrets(args: list[str]) -> set[str]:
    """Values given on the command line to credential keys (``output.storage_options.secret=…``), for scrubbing
    error lines that echo an override."""
    found = set()
    for arg in args:
        key, eq, value = arg.partition("=")
        if eq and key.lstrip("+~").rpartition(".")[2] in SECRET_KEYS and value:
            found.add(value)
    return found


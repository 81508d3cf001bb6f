"""Credentials never leave the job: redacted copies of the config for what it records, and a Hydra callback that
scrubs the files Hydra itself writes (``.hydra/{config,hydra,overrides}.yaml``, a sweep's ``multirun.yaml``).

Credentials are the values under the s3fs/boto keys in ``SECRET_KEYS`` anywhere in the config (typically
``data.storage_options`` / ``output.storage_options``). The safest place for them is still the environment
(``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``) or a credentials file (``AWS_SHARED_CREDENTIALS_FILE``,
``AWS_PROFILE``): then they are in no config at all.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SECRET_KEYS = frozenset({"key", "secret", "token", "password", "aws_access_key_id", "aws_secret_access_key",
                         "aws_session_token", "session_token", "secret_access_key", "access_key_id"})
REDACTED = "<redacted>"


def redacted(value: Any) -> Any:
    """``value`` with credentials (s3fs ``key``/``secret``/``token``, ...) replaced, for what the job records."""
    if isinstance(value, dict):
        return {k: REDACTED if k in SECRET_KEYS and v is not None else redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value


def secret_values(value: Any) -> set[str]:
    """Every credential string in a plain config (values under ``SECRET_KEYS``)."""
    if isinstance(value, dict):
        found = {str(v) for k, v in value.items() if k in SECRET_KEYS and v not in (None, "")}
        for v in value.values():
            found |= secret_values(v)
        return found
    if isinstance(value, list):
        return set().union(*(secret_values(v) for v in value)) if value else set()
    return set()


def scrub(text: str, secrets: set[str]) -> str:
    """``text`` with every secret replaced (longest first, so no secret leaves a recognisable part behind)."""
    for s in sorted(secrets, key=len, reverse=True):
        text = text.replace(s, REDACTED)
    return text


def _scrub_file(path: Path, secrets: set[str]) -> None:
    if path.is_file():
        text = path.read_text()
        clean = scrub(text, secrets)
        if clean != text:
            path.write_text(clean)


def _config_secrets(config: DictConfig) -> set[str]:
    task = OmegaConf.to_container(config, resolve=False)
    task.pop("hydra", None)
    return secret_values(task)


def scrub_log_records(secrets: set[str]) -> None:
    """From now on, every log record of this process has ``secrets`` replaced (Hydra's launcher logs each sweep
    point's overrides; Ray and s3fs may echo options in errors)."""
    if not secrets:
        return
    make = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make(*args, **kwargs)
        message = record.getMessage()
        clean = scrub(message, secrets)
        if clean != message:
            record.msg, record.args = clean, None
        return record

    logging.setLogRecordFactory(factory)


class RedactSecrets(Callback):
    """Hydra callback of every job (conf/hydra/callbacks/redact_secrets.yaml): log records of the run or sweep are
    scrubbed, and at the start of every job the files Hydra wrote for it, and a sweep's ``multirun.yaml``, are
    rewritten without the job's credentials."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        scrub_log_records(_config_secrets(config))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        scrub_log_records(_config_secrets(config))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        secrets = _config_secrets(config)
        if not secrets:
            return
        hc = HydraConfig.get()
        if hc.output_subdir is not None:
            for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
                _scrub_file(Path(hc.runtime.output_dir) / hc.output_subdir / name, secrets)
        if hc.mode is not None and hc.mode.name == "MULTIRUN":
            _scrub_file(Path(hc.sweep.dir) / "multirun.yaml", secrets)

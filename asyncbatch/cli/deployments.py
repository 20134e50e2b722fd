"""--deployments FILE: the TOML file that lists the deployments a run pools.

Pure: it reads the file and checks it; the environment variables it names are
read by the CLI (the only reader of the environment). The keys are fixed::

    [[deployments]]
    name = "east"                          # label in the display and in results
    endpoint = "https://east-res.openai.azure.com"
    deployment = "gpt-4o"
    api_key_env = "AZURE_OPENAI_API_KEY_EAST"   # the NAME of the variable holding the key
    # auth = "entra", or token_command = "...", instead of api_key_env
    api_version = "2024-10-21"             # optional
    tpm = 600000                           # optional; without tpm/rpm this deployment is adaptive
    rpm = 3600                             # optional
    priority = 0                           # optional; lower is used first
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

KEYS = {
    "name": str,
    "endpoint": str,
    "deployment": str,
    "api_key_env": str,
    "auth": str,
    "token_command": str,
    "api_version": str,
    "tpm": int,
    "rpm": int,
    "priority": int,
}
SECRET_KEYS = {"api_key", "key", "api-key", "token", "azure_openai_api_key"}


@dataclass(frozen=True, slots=True)
class DeploymentSpec:
    """One ``[[deployments]]`` entry, checked; credentials still by name (``api_key_env``)."""

    name: str
    endpoint: str
    deployment: str
    api_key_env: str | None = None
    auth: str | None = None  # "entra"
    token_command: str | None = None
    api_version: str | None = None
    tpm: int | None = None
    rpm: int | None = None
    priority: int = 0


def load_deployments(path: Path) -> list[DeploymentSpec]:
    """Read and check a deployments file. :raises ConfigError: naming the file, the entry and the fix."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read --deployments {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--deployments {path} is not valid TOML: {exc}") from None
    entries = data.get("deployments")
    extra = sorted(set(data) - {"deployments"})
    if extra:
        raise ConfigError(f"--deployments {path}: unknown top-level key(s) {', '.join(extra)}; use [[deployments]]")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"--deployments {path} lists no deployments: add [[deployments]] tables (see docs/pools.md)")
    specs = [_spec(path, i, entry) for i, entry in enumerate(entries, start=1)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"--deployments {path}: each name must be different ({', '.join(twice)} repeated)")
    return specs


def _spec(path: Path, index: int, entry: Any) -> DeploymentSpec:
    where = f"--deployments {path}, deployment {index}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a [[deployments]] table")
    if secret := sorted(k for k in entry if k.lower() in SECRET_KEYS):
        raise ConfigError(
            f"{where}: a key in the file ({', '.join(secret)}) is refused, so it never lands in version control; "
            "put it in an environment variable (or .env) and name that variable with api_key_env"
        )
    if unknown := sorted(set(entry) - set(KEYS)):
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; the keys are {', '.join(KEYS)}")
    for key, value in entry.items():
        if not isinstance(value, KEYS[key]) or isinstance(value, bool):
            raise ConfigError(f"{where}: {key} must be a {KEYS[key].__name__} (got {value!r})")
    where = f"--deployments {path}, deployment {entry.get('name', index)!r}"
    missing = [k for k in ("name", "endpoint", "deployment") if not entry.get(k)]
    if missing:
        raise ConfigError(f"{where}: missing {', '.join(missing)}")
    for key in ("tpm", "rpm"):
        if key in entry and entry[key] < 1:
            raise ConfigError(f"{where}: {key} must be at least 1 (got {entry[key]})")
    ways = [k for k in ("api_key_env", "auth", "token_command") if k in entry]
    if len(ways) > 1:
        raise ConfigError(f'{where}: give one of api_key_env, auth = "entra" or token_command (got {ways})')
    if "auth" in entry and entry["auth"] != "entra":
        raise ConfigError(f'{where}: auth must be "entra" (for a key, use api_key_env)')
    return DeploymentSpec(**entry)

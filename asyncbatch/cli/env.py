"""The environment (and a .env file) -> endpoints and credentials. The only reader of the environment."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from dotenv import dotenv_values

from ..config import (
    DEFAULT_API_VERSION,
    Deployment,
    Endpoint,
)
from ..errors import ConfigError
from ..live.auth import TokenProvider, command_provider, default_credential_provider
from .deployments import DeploymentSpec
from .endpoints import check_base_url

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
COMMANDS = ("ASYNCBATCH_TOKEN_COMMAND",)  # never taken from a .env file: cloning a repository must not run code


@dataclasses.dataclass
class Env:
    """The variables asyncbatch reads: the real environment's, over a .env file's (which never sets a command)."""

    values: dict[str, str]
    loaded: list[str]  # names taken from the file
    ignored: list[str]  # names in the file that only the real environment may set
    path: Path | None = None

    def notes(self) -> tuple[list[str], list[str]]:
        """(info, warnings) to show: which file was read, and what in it was refused."""
        where = self.path.resolve() if self.path else None
        info = [f"read {', '.join(self.loaded)} from {where} (the real environment wins)"] if self.loaded else []
        warnings = [
            f"{where} sets {name}, which is ignored: a command is run only from the real environment or "
            "--token-command, never from a .env file"
            for name in self.ignored
        ]
        return info, warnings


def load_env(env_file: Path | None, environ: Mapping[str, str]) -> Env:
    """The .env file's values under the real environment's (real variables win); commands only from the latter.

    A file named with --env-file must exist; the default ./.env is read only if it does.
    """
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file {env_file} does not exist")
    path = env_file or Path(".env")
    if not path.is_file():
        return Env(dict(environ), [], [])
    values = {k: v for k, v in dotenv_values(path).items() if v is not None}
    ignored = sorted(k for k in values if k in COMMANDS)
    kept = {k: v for k, v in values.items() if k not in COMMANDS}
    loaded = sorted(k for k in kept if k not in environ)
    return Env({**kept, **environ}, loaded, ignored, path)


def endpoint_kind(env: Mapping[str, str]) -> Literal["azure", "openai"]:
    """Azure unless only OpenAI's variables are set."""
    azure_vars = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY")
    openai = env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL")
    return "azure" if any(env.get(v) for v in azure_vars) or not openai else "openai"


def endpoint_from_env(env: Mapping[str, str], args: argparse.Namespace) -> Endpoint:
    if endpoint_kind(env) == "azure":
        if pasted := env.get("AZURE_OPENAI_ENDPOINT"):
            check_base_url(pasted, "azure", "AZURE_OPENAI_ENDPOINT")  # a pasted request URL: its whole hint first
        deployment = args.deployment or env.get("AZURE_OPENAI_DEPLOYMENT_NAME")
        needed = {"AZURE_OPENAI_ENDPOINT": env.get("AZURE_OPENAI_ENDPOINT")}
        _require({**needed, "AZURE_OPENAI_DEPLOYMENT_NAME (or --deployment)": deployment})
        url = (env["AZURE_OPENAI_ENDPOINT"], "AZURE_OPENAI_ENDPOINT")
        return azure_endpoint(url, str(deployment), azure_auth(env, args), None, env, args)
    model = args.deployment or env.get("OPENAI_MODEL")
    _require({"OPENAI_API_KEY": env.get("OPENAI_API_KEY"), "OPENAI_MODEL (or --deployment)": model})
    base_url = check_base_url(env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL, "openai", "OPENAI_BASE_URL")
    return Endpoint(
        kind="openai",
        base_url=base_url,
        api_key=env["OPENAI_API_KEY"],
        deployment=str(model),
        headers=parse_headers(args.header),
    )


def deployments_from_env(
    specs: Sequence[DeploymentSpec], env: Mapping[str, str], args: argparse.Namespace
) -> tuple[Deployment, ...]:
    """A deployments file's entries, with the keys its ``api_key_env`` entries name read from ``env``."""
    credential: list[TokenProvider] = []  # DefaultAzureCredential, built once for every entry that wants it

    def auth(spec: DeploymentSpec) -> tuple[str, TokenProvider | None]:
        if spec.token_command:
            return "", command_provider(spec.token_command)
        if spec.auth == "entra":
            credential[:] = credential or [default_credential_provider()]
            return "", credential[0]
        if not spec.api_key_env:
            raise ConfigError(f'deployment {spec.name!r}: give api_key_env, auth = "entra" or token_command')
        key = env.get(spec.api_key_env)
        if not key:
            raise ConfigError(
                f"deployment {spec.name!r}: api_key_env names {spec.api_key_env}, which is not set "
                "(set it in the environment or in .env)"
            )
        return key, None

    return tuple(_deployment(spec, auth(spec), env, args) for spec in specs)


def _deployment(
    spec: DeploymentSpec, auth: tuple[str, TokenProvider | None], env: Mapping[str, str], args: argparse.Namespace
) -> Deployment:
    url = (spec.endpoint, f"the endpoint of deployment {spec.name!r}")
    endpoint = azure_endpoint(url, spec.deployment, auth, spec.api_version, env, args)
    return Deployment(name=spec.name, endpoint=endpoint, tpm=spec.tpm, rpm=spec.rpm, priority=spec.priority)


def azure_endpoint(
    url: tuple[str, str],
    deployment: str,
    auth: tuple[str, TokenProvider | None],
    api_version: str | None,
    env: Mapping[str, str],
    args: argparse.Namespace,
) -> Endpoint:
    """The one Azure endpoint builder. ``url``: (value, where it came from, for errors)."""
    base_url = check_base_url(url[0], "azure", url[1])
    version = api_version or args.api_version or env.get("AZURE_OPENAI_API_VERSION") or DEFAULT_API_VERSION
    if base_url.endswith("/openai/v1"):  # the v1 API's base URL, as the portal shows it
        base_url, version = base_url.removesuffix("/openai/v1"), "v1"
    return Endpoint(
        kind="azure",
        base_url=base_url,
        api_key=auth[0],
        token_provider=auth[1],
        deployment=deployment,
        api_version=version,
        headers=parse_headers(args.header),
    )


def azure_auth(env: Mapping[str, str], args: argparse.Namespace) -> tuple[str, TokenProvider | None]:
    """--token-command; else the API key; else Entra ID: ASYNCBATCH_TOKEN_COMMAND, else DefaultAzureCredential."""
    key = env.get("AZURE_OPENAI_API_KEY") or ""
    if args.auth == "key":
        _require({"AZURE_OPENAI_API_KEY": key})
        return key, None
    if args.token_command:
        return "", command_provider(args.token_command)
    if key and args.auth != "entra":
        return key, None
    if command := env.get("ASYNCBATCH_TOKEN_COMMAND"):
        return "", command_provider(command)
    return "", default_credential_provider()


def parse_headers(values: Sequence[str]) -> dict[str, str]:
    """``--header 'Name: value'`` options -> a dict (the value is a secret: it is never echoed)."""
    headers = {}
    for value in values:
        name, colon, content = value.partition(":")
        if not colon or not name.strip() or not content.strip():
            raise ConfigError(f"--header takes 'Name: value' (got a value without a name, or a name alone: {name!r})")
        headers[name.strip()] = content.strip()
    return headers


def _require(values: Mapping[str, str | None]) -> None:
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(
            f"missing configuration: {', '.join(missing)}. "
            "HINT: set it in the environment or in .env (see .env.example), "
            "or try the tool with --simulate, which needs no credentials"
        )

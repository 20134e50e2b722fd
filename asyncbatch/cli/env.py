"""The environment (and a .env file) -> endpoints and credentials. The only reader of the environment.

Credentials from outside are judged here, once, by one rule (``credential``): a key, a token or a
``--header`` value holds printable ASCII only. One line feed at its end (a value pasted with its
newline) is removed, with a notice; any other control character, a carriage return included (so a
Windows line ending ``\\r\\n`` too), is refused with a message that names the variable or option,
never the value (exit 2). ``config.credential_problem`` says what is wrong.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]  # not in typeshed

from dotenv import dotenv_values

from ..auth import TOKEN_TIMEOUT, TokenCommand, TokenProvider, default_credential_provider
from ..config import (
    DEFAULT_API_VERSION,
    Deployment,
    Endpoint,
    credential_problem,
    proxy_problem,
)
from ..errors import ConfigError
from ..redact import header_secrets, url_secrets
from .deployments import DeploymentSpec
from .endpoints import check_base_url

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
COMMANDS = ("ASYNCBATCH_TOKEN_COMMAND",)  # never taken from a .env file: cloning a repository must not run code
KEYS = ("AZURE_OPENAI_API_KEY", "OPENAI_API_KEY")
URLS = ("AZURE_OPENAI_ENDPOINT", "OPENAI_BASE_URL")
# Where requests go through, as curl, Python and the openai SDK read it (any case, lower case first): from the
# real environment only, as a command is: a .env file that comes with a folder never routes your requests.
PROXIES = ("https_proxy", "http_proxy", "all_proxy", "no_proxy")
DEFAULT_PORTS = {"http": 80, "https": 443}
LOCALHOST = "localhost"  # with 127.0.0.0/8 and ::1, never through a proxy (as Go's HTTP client does): a local server


def credential(value: str, name: str, notices: list[str]) -> str:
    """A key, token or header value from outside, by the one rule (see the module's docstring).

    :param name: the variable or option it came from: the messages name it, never the value.
    :param notices: told when a line feed at the end was removed.
    """
    if len(value) > 1 and value.endswith("\n") and not value.endswith("\r\n"):
        value = value[:-1]
        notices.append(f"{name} ended with a line feed (\\n), which was removed")
    if problem := credential_problem(value):
        raise ConfigError(
            f"{name} {problem}. HINT: set it again with the value alone, printable ASCII "
            "(it is a secret, so it is not shown here)"
        )
    return value


def secrets_in(environ: Mapping[str, str]) -> list[str]:
    """The secrets the environment holds, as given and as used: keys, and the passwords in endpoint URLs.
    Known before anything is read or checked, so that no message can show them."""
    keys = [environ.get(name) or "" for name in KEYS]
    urls = [secret for name in URLS for secret in url_secrets(environ.get(name) or "")]
    urls += [secret for name, value in environ.items() if name.lower() in PROXIES for secret in url_secrets(value)]
    return [*keys, *(key.strip() for key in keys), *urls]


@dataclasses.dataclass
class Env:
    """The variables asyncbatch reads: the real environment's, over a .env file's (which never sets a command)."""

    values: dict[str, str]
    loaded: list[str]  # names taken from the file
    ignored: list[str]  # names in the file that only the real environment may set
    path: Path | None = None
    notices: list[str] = dataclasses.field(default_factory=list)  # credentials cleaned (``credential``)
    proxies: dict[str, str] = dataclasses.field(default_factory=dict)  # ``proxies_in`` the real environment

    def credential(self, name: str) -> str | None:
        """The variable ``name``, a credential: by the one rule, cleaned in place (a notice if it was)."""
        value = self.values.get(name)
        if value:
            self.values[name] = value = credential(value, name, self.notices)
        return value

    def notes(self) -> tuple[list[str], list[str]]:
        """(info, warnings) to show: which file was read, credentials cleaned, and what in the file was refused."""
        where = self.path.resolve() if self.path else None
        info = [f"read {', '.join(self.loaded)} from {where} (the real environment wins)"] if self.loaded else []
        info += self.notices
        warnings = [
            f"{where} sets {name}, which is ignored: a command is run only from the real environment or "
            "--token-command, never from a .env file"
            if name in COMMANDS
            else f"{where} sets {name}, which is ignored: requests go through the proxy the real environment "
            "names, never one a .env file names"
            for name in self.ignored
        ]
        return info, warnings

    def proxy(self, url: str) -> str | None:
        """The proxy requests to ``url`` go through, by the real environment's variables (see ``proxy_for``)."""
        return proxy_for(url, self.proxies)


def proxies_in(environ: Mapping[str, str]) -> dict[str, str]:
    """The proxy variables set (an empty one is not), by lower-case name; ``https_proxy`` wins over ``HTTPS_PROXY``."""
    given = {name: value.strip() for name, value in environ.items() if value.strip()}
    found = {name.lower(): value for name, value in given.items() if name.isupper() and name.lower() in PROXIES}
    return found | {name: value for name, value in given.items() if name in PROXIES}


def proxy_for(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy for ``url``: ``<scheme>_proxy``, else ``all_proxy``; none for a host ``no_proxy`` names (Python's
    rule: a suffix, ``*`` for every host) or a loopback one. :raises ConfigError: naming a variable that is not
    an HTTP proxy's URL (never its value: it may hold a password)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    name = f"{parts.scheme}_proxy" if proxies.get(f"{parts.scheme}_proxy") else "all_proxy"
    proxy = proxies.get(name)
    if not proxy or _loopback(host):
        return None
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)  # ``host:443`` in no_proxy names https://host too
    if proxy_bypass_environment(f"{host}:{port}" if port else host, {"no": proxies.get("no_proxy", "")}):
        return None
    if problem := proxy_problem(proxy):
        raise ConfigError(f"{name} (or {name.upper()}) {problem}. HINT: set it to http://host:port, or unset it")
    return proxy


def _loopback(host: str) -> bool:
    """``localhost``, or an address of this machine's own (127.0.0.0/8, ::1): a name such as ``127.example.com``
    is not one."""
    try:
        return host == LOCALHOST or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name
        return False


def load_env(env_file: Path | None, environ: Mapping[str, str]) -> Env:
    """The .env file's values under the real environment's (real variables win); commands only from the latter.

    A file named with --env-file must exist; the default ./.env is read only if it does.
    """
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file {env_file} does not exist")
    path = env_file or Path(".env")
    if not path.is_file():
        env = Env(dict(environ), [], [])
    else:
        values = {k: v for k, v in dotenv_values(path).items() if v is not None}
        ignored = sorted(k for k in values if k in COMMANDS or k.lower() in PROXIES)
        kept = {k: v for k, v in values.items() if k not in ignored}
        loaded = sorted(k for k in kept if k not in environ)
        env = Env({**kept, **environ}, loaded, ignored, path)
    env.proxies = proxies_in(environ)
    for name in KEYS:
        env.credential(name)
    return env


def endpoint_kind(env: Mapping[str, str]) -> Literal["azure", "openai"]:
    """Azure unless only OpenAI's variables are set."""
    azure_vars = ("AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY")
    openai = env.get("OPENAI_API_KEY") or env.get("OPENAI_BASE_URL")
    return "azure" if any(env.get(v) for v in azure_vars) or not openai else "openai"


# .env.example's values, as a copy not yet filled in holds them: said as such, not sent to a host that does not exist
PLACEHOLDERS = {
    "AZURE_OPENAI_ENDPOINT": "https://your-resource.openai.azure.com",
    "AZURE_OPENAI_API_KEY": "your-key-here",
    "AZURE_OPENAI_DEPLOYMENT_NAME": "your-deployment",
    "OPENAI_MODEL": "your-model",
}


def _placeholders(env: Mapping[str, str]) -> None:
    """:raises ConfigError: naming the variables still at .env.example's placeholder, and how to go on."""
    if unfilled := [name for name, value in PLACEHOLDERS.items() if env.get(name, "").strip().rstrip("/") == value]:
        raise ConfigError(
            f"{', '.join(unfilled)} still hold .env.example's placeholder{'s' if len(unfilled) > 1 else ''}. HINT: "
            "fill them in (the Azure portal's 'Keys and Endpoint' page of your resource, and its deployment's "
            "name), or add --simulate to try asyncbatch on its built-in simulator first"
        )


def endpoint_from_env(environment: Env, args: argparse.Namespace) -> Endpoint:
    env = environment.values
    _placeholders(env)
    if endpoint_kind(env) == "azure":
        if pasted := env.get("AZURE_OPENAI_ENDPOINT"):
            check_base_url(pasted, "azure", "AZURE_OPENAI_ENDPOINT")  # a pasted request URL: its whole hint first
        deployment = args.deployment or env.get("AZURE_OPENAI_DEPLOYMENT_NAME")
        needed = {"AZURE_OPENAI_ENDPOINT": env.get("AZURE_OPENAI_ENDPOINT")}
        _require({**needed, "AZURE_OPENAI_DEPLOYMENT_NAME (or --deployment)": deployment})
        url = (env["AZURE_OPENAI_ENDPOINT"], "AZURE_OPENAI_ENDPOINT")
        endpoint = azure_endpoint(url, str(deployment), azure_auth(env, args), None, environment, args)
        return _credentials_from_its_source(endpoint, environment, "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_API_KEY")
    model = args.deployment or env.get("OPENAI_MODEL")
    _require({"OPENAI_API_KEY": env.get("OPENAI_API_KEY"), "OPENAI_MODEL (or --deployment)": model})
    base_url = check_base_url(env.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL, "openai", "OPENAI_BASE_URL")
    endpoint = Endpoint(
        kind="openai",
        base_url=base_url,
        api_key=env["OPENAI_API_KEY"],
        deployment=str(model),
        headers=parse_headers(args.header, environment.notices),
        proxy=environment.proxy(base_url),
    )
    return _credentials_from_its_source(endpoint, environment, "OPENAI_BASE_URL", "OPENAI_API_KEY")


# The services' own hosts, over https: a credential sent to another resource there is refused by the service,
# never kept by whoever named the resource.
_SERVICE_HOSTS = (".openai.azure.com", ".cognitiveservices.azure.com", ".services.ai.azure.com")
_OPENAI_HOST = "api.openai.com"


def _credentials_from_its_source(endpoint: Endpoint, environment: Env, url_name: str, key_name: str) -> Endpoint:
    """An endpoint named only by a .env file gets only the credentials that file gives (or is the service's own).

    A .env file comes with a folder (a cloned repository); the real environment's key, Entra ID's token, a
    token command and the --header values are the user's. Sent to a host the .env names, they would go
    wherever its author likes. (The same reason a .env never runs a command.)
    :raises ConfigError: naming what would have gone where, and the two ways to go on.
    """
    if url_name not in environment.loaded:
        return endpoint
    where = environment.path.resolve() if environment.path else ".env"
    said = f"{url_name} from {where}: every request, with its credentials, goes to {endpoint.base_url}"
    if _service_host(endpoint.base_url):
        environment.notices.append(said)
        return endpoint
    outside = [f"{key_name} from the environment"] if endpoint.api_key and key_name not in environment.loaded else []
    outside += ["an Entra ID token"] if endpoint.token_provider is not None else []
    headers = any(header_secrets(f"{name}: {value}") for name, value in endpoint.headers.items())
    outside += ["the --header values"] if headers else []
    if not outside:
        environment.notices.append(said)
        return endpoint
    raise ConfigError(
        f"{url_name} comes from {where} alone, and {' and '.join(outside)} would go to it: a .env file that comes "
        f"with a folder names where your credentials go. HINT: if that endpoint is yours, set {url_name} in the "
        f"environment too (export {url_name}=...), or put its key in that .env beside it"
    )


def _service_host(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and (host.endswith(_SERVICE_HOSTS) or host == _OPENAI_HOST)


def deployments_from_env(specs: Sequence[DeploymentSpec], env: Env, args: argparse.Namespace) -> tuple[Deployment, ...]:
    """A deployments file's entries, with the keys its ``api_key_env`` entries name read from ``env``."""
    credential: list[TokenProvider] = []  # DefaultAzureCredential, built once for every entry that wants it

    def auth(spec: DeploymentSpec) -> tuple[str, TokenProvider | None]:
        if spec.token_command:
            source = f"the token_command of deployment {spec.name!r}"
            return "", TokenCommand(spec.token_command, source=source, timeout=_token_timeout(args))
        if spec.auth == "entra":
            credential[:] = credential or [default_credential_provider()]
            return "", credential[0]
        if not spec.api_key_env:
            raise ConfigError(f'deployment {spec.name!r}: give api_key_env, auth = "entra" or token_command')
        key = env.credential(spec.api_key_env)
        if not key:
            raise ConfigError(
                f"deployment {spec.name!r}: api_key_env names {spec.api_key_env}, which is not set "
                "(set it in the environment or in .env)"
            )
        return key, None

    return tuple(_deployment(spec, auth(spec), env, args) for spec in specs)


def _deployment(
    spec: DeploymentSpec, auth: tuple[str, TokenProvider | None], env: Env, args: argparse.Namespace
) -> Deployment:
    url = (spec.endpoint, f"the endpoint of deployment {spec.name!r}")
    endpoint = azure_endpoint(url, spec.deployment, auth, spec.api_version, env, args)
    return Deployment(name=spec.name, endpoint=endpoint, tpm=spec.tpm, rpm=spec.rpm, priority=spec.priority)


def azure_endpoint(
    url: tuple[str, str],
    deployment: str,
    auth: tuple[str, TokenProvider | None],
    api_version: str | None,
    env: Env,
    args: argparse.Namespace,
) -> Endpoint:
    """The one Azure endpoint builder. ``url``: (value, where it came from, for errors)."""
    base_url = check_base_url(url[0], "azure", url[1])
    version = api_version or args.api_version or env.values.get("AZURE_OPENAI_API_VERSION") or DEFAULT_API_VERSION
    if base_url.endswith("/openai/v1"):  # the v1 API's base URL, as the portal shows it
        base_url, version = base_url.removesuffix("/openai/v1"), "v1"
    return Endpoint(
        kind="azure",
        base_url=base_url,
        api_key=auth[0],
        token_provider=auth[1],
        deployment=deployment,
        api_version=version,
        headers=parse_headers(args.header, env.notices),
        proxy=env.proxy(base_url),
    )


def azure_auth(env: Mapping[str, str], args: argparse.Namespace) -> tuple[str, TokenProvider | None]:
    """--token-command; else the API key; else Entra ID: ASYNCBATCH_TOKEN_COMMAND, else DefaultAzureCredential."""
    key = env.get("AZURE_OPENAI_API_KEY") or ""
    if args.auth == "key":
        _require({"AZURE_OPENAI_API_KEY": key})
        return key, None
    if args.token_command:
        return "", TokenCommand(args.token_command, timeout=_token_timeout(args))
    if key and args.auth != "entra":
        return key, None
    if command := env.get("ASYNCBATCH_TOKEN_COMMAND"):
        return "", TokenCommand(command, source="ASYNCBATCH_TOKEN_COMMAND", timeout=_token_timeout(args))
    return "", default_credential_provider()


def _token_timeout(args: argparse.Namespace) -> float:
    return float(getattr(args, "token_timeout", TOKEN_TIMEOUT))


def parse_headers(values: Sequence[str], notices: list[str] | None = None) -> dict[str, str]:
    """``--header 'Name: value'`` options -> a dict. The value is a secret: it is never echoed, and it is
    judged by the one rule for credentials (``credential``), as ``--header 'Name'``."""
    headers = {}
    for value in values:
        name, colon, content = value.partition(":")
        name, content = name.strip(" \t"), content.strip(" \t")
        if not colon or not name or not content.strip():
            raise ConfigError("--header takes 'Name: value' (got a value without a name, or a name alone)")
        headers[name] = credential(content, f"the value of --header {name!r}", [] if notices is None else notices)
    return headers


def _require(values: Mapping[str, str | None]) -> None:
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise ConfigError(
            f"missing configuration: {', '.join(missing)}. "
            "HINT: set it in the environment or in .env (see .env.example), "
            "or try the tool with --simulate, which needs no credentials"
        )

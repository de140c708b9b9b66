"""Start-up checks for the security options. Each raises ConfigError with one line for the user.

The rule they enforce: out of the box everything is loopback and unsealed. Anything that reaches
beyond this host (`--lan`, a non-loopback broadcast, mesh or API address) needs a mesh key (and,
for the API, a token) unless `--insecure` says otherwise.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import re
import shutil
import ssl
import subprocess
from pathlib import Path

from actors.config import ConfigError, NodeConfig
from proto.seal import KeyFileError, parse_keys, read_key_file

KEYGEN_HINT = "make a key with `python run_node.py keygen > mesh.key` and pass --key-file mesh.key"


def load_keys(key_file: str | None, env_value: str | None) -> tuple[bytes, ...]:
    """Keys from --key-file, else MESH_KEY (base64, comma-separated for several); () when neither."""
    try:
        if key_file:
            return tuple(read_key_file(Path(key_file)))
        if env_value:
            return tuple(parse_keys(env_value, "MESH_KEY"))
    except KeyFileError as exc:
        raise ConfigError(str(exc)) from None
    return ()


def load_token(token_file: str | None, env_value: str | None) -> str | None:
    """The API token from --api-token-file (its first line), else MESH_API_TOKEN."""
    if token_file:
        try:
            token = Path(token_file).read_text().strip().splitlines()[0:1]
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"--api-token-file {token_file}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
        if not token or not token[0].strip():
            raise ConfigError(f"--api-token-file {token_file}: the file is empty")
        return token[0].strip()
    if env_value is not None:
        if not env_value.strip():
            raise ConfigError("MESH_API_TOKEN is set but empty")
        return env_value.strip()
    return None


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def lan_broadcasts() -> tuple[str, ...]:
    """The broadcast address of every up, non-loopback IPv4 interface (from `ip -j addr`)."""
    ip = shutil.which("ip")
    if ip is None:
        raise ConfigError("--lan needs the `ip` command to find this host's networks; give --broadcast ADDR")
    try:
        out = subprocess.run(
            [ip, "-j", "-4", "addr", "show", "up"], capture_output=True, check=True, timeout=5
        )
        interfaces = json.loads(out.stdout or b"[]")
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        raise ConfigError(
            f"--lan could not list this host's networks ({exc}); give --broadcast ADDR"
        ) from None
    found = []
    for interface in interfaces:
        if "LOOPBACK" in interface.get("flags", []):
            continue
        for info in interface.get("addr_info", []):
            if info.get("broadcast"):
                found.append(info["broadcast"])
    if not found:
        raise ConfigError("--lan found no network with a broadcast address; give --broadcast ADDR")
    return tuple(dict.fromkeys(found))


def check_exposure(
    broadcast: tuple[str, ...], mesh_host: str, api_host: str, sealed: bool, token: bool, insecure: bool
) -> list[str]:
    """Refuse to reach beyond loopback without a key (mesh) or a token (API), unless insecure.

    Returns the warnings to log when `insecure` lets an exposed set-up through."""
    warnings = []
    exposed_mesh = [a for a in (*broadcast, mesh_host) if not is_loopback(a)]
    if exposed_mesh and not sealed:
        if not insecure:
            raise ConfigError(
                f"{', '.join(exposed_mesh)} reaches beyond this host and the mesh has no key: anyone on "
                f"the network could run commands. {KEYGEN_HINT} (or --insecure to allow it)"
            )
        warnings.append(
            f"the mesh is UNSEALED and reachable at {', '.join(exposed_mesh)}: anyone there can run commands"
        )
    if not is_loopback(api_host) and not token:
        if not insecure:
            raise ConfigError(
                f"--api-host {api_host} serves the API beyond this host without a token: set "
                "--api-token-file or MESH_API_TOKEN (or --insecure to allow it)"
            )
        warnings.append(f"the API on {api_host} has NO TOKEN: anyone who reaches it can run commands")
    return warnings


def check_tls(cert: str | None, key: str | None) -> tuple[Path | None, Path | None]:
    if not cert and not key:
        return None, None
    if not (cert and key):
        raise ConfigError("--tls-cert and --tls-key go together")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"--tls-cert/--tls-key: {getattr(exc, 'strerror', None) or exc} "
            "(both must be PEM files, and the key must belong to the certificate)"
        ) from None
    return Path(cert), Path(key)


def check_run_as(user: str | None) -> str | None:
    if user is None:
        return None
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(f"--run-as: no user {user!r} on this host") from None
    if os.geteuid() != 0:
        raise ConfigError(f"--run-as needs the node to run as root (it runs as uid {os.geteuid()})")
    return user


def check_patterns(patterns: list[str]) -> tuple[str, ...]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"--allow-commands {pattern!r}: {exc}") from None
    return tuple(patterns)


def security_warnings(config: NodeConfig) -> list[str]:
    """What an --insecure set-up exposes (empty when nothing is)."""
    return check_exposure(
        config.broadcast,
        config.mesh_host,
        config.api_host,
        bool(config.keys),
        config.api_token is not None,
        True,
    )


def security_status(config: NodeConfig, keys_in_use: int) -> dict[str, object]:
    """The `security` section of /api/v1/status (no secret in it)."""
    return {
        "sealed": bool(config.keys),
        "keys": keys_in_use,
        "api_token": config.api_token is not None,
        "tls": config.tls_cert is not None,
        "insecure": config.insecure,
        "warnings": security_warnings(config),
        "run_as": config.run_as,
        "allow_commands": list(config.allow_commands),
    }

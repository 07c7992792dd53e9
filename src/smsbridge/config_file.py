"""Loading and checking the TOML configuration, reporting every problem with where it is.

msgspec stops at the first error of a value, so we walk the Struct fields ourselves and convert
each one, collecting a `Problem` per bad field; semantic checks (references between sections,
duplicate DIDs, weak tokens) run once the shapes are right.
"""

from __future__ import annotations

import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import msgspec

from smsbridge.config import EmailTarget, Settings, SmsConfig
from smsbridge.destinations import network_problems
from smsbridge.media.check import media_problems
from smsbridge.secret import Secret

MIN_TOKEN_LENGTH = 24
MIN_ID_KEY_LENGTH = 32  # an HMAC key, as `[media] link_key`


class Problem(NamedTuple):
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


DecHook = Callable[[type, Any], Any]


def load_settings(path: str | Path, env: Mapping[str, str] | None = None) -> Settings:
    """Read, validate and resolve a configuration file; raise `ConfigError` listing every problem."""
    settings, problems = check_file(path, env)
    if settings is None or problems:
        raise ConfigError(str(path), problems)
    return settings


def check_file(
    path: str | Path, env: Mapping[str, str] | None = None
) -> tuple[Settings | None, list[Problem]]:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return None, [Problem("", f"cannot read the file: {exc.strerror or exc}")]
    except tomllib.TOMLDecodeError as exc:
        return None, [Problem("", f"not valid TOML: {exc}")]
    hook = _secret_hook(os.environ if env is None else env, path.parent)
    settings, problems = collect(raw, Settings, "", hook)
    if settings is None:
        return None, problems
    return settings, semantic_problems(settings)


def _secret_hook(env: Mapping[str, str], base_dir: Path) -> DecHook:
    def hook(typ: type, obj: Any) -> Any:
        if typ is Secret:
            return resolve_secret(obj, env, base_dir)
        raise TypeError(f"unsupported type {typ!r}")

    return hook


def resolve_secret(ref: Any, env: Mapping[str, str], base_dir: Path) -> Secret:
    """Turn `{ env = "NAME" }` or `{ file = "path" }` into a `Secret`; never accept a literal."""
    if not isinstance(ref, dict) or len(ref) != 1 or not ({"env", "file"} & ref.keys()):
        raise ValueError('write a secret as { env = "NAME" } or { file = "path" }, never inline')
    if "env" in ref:
        value = env.get(str(ref["env"]), "")
        if not value:
            raise ValueError(f"environment variable {ref['env']} is not set or empty")
        return Secret(value)
    file = base_dir / str(ref["file"])
    try:
        value = file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read secret file {file}: {exc.strerror or exc}") from None
    if not value:
        raise ValueError(f"secret file {file} is empty")
    return Secret(value)


def collect(value: Any, typ: Any, where: str, hook: DecHook) -> tuple[Any, list[Problem]]:
    """Convert `value` to `typ`, descending into Structs and lists to report every bad field."""
    target = _unwrap(typ)
    if isinstance(target, type) and issubclass(target, msgspec.Struct) and isinstance(value, dict):
        problems = _struct_problems(value, target, where, hook)
    elif typing.get_origin(target) is list and isinstance(value, list):
        (item_type,) = typing.get_args(target)
        problems = [
            p for i, item in enumerate(value) for p in collect(item, item_type, f"{where}[{i}]", hook)[1]
        ]
    else:
        problems = []
    if problems:
        return None, problems
    return _convert(value, typ, where, hook)


def _struct_problems(
    value: dict[str, Any], typ: type[msgspec.Struct], where: str, hook: DecHook
) -> list[Problem]:
    fields = msgspec.structs.fields(typ)
    known = {f.encode_name for f in fields} | {typ.__struct_config__.tag_field}
    prefix = f"{where}." if where else ""
    problems = [Problem(f"{prefix}{key}", "unknown key (a typo?)") for key in value if key not in known]
    for f in fields:
        if f.encode_name in value:
            problems += collect(value[f.encode_name], f.type, prefix + f.encode_name, hook)[1]
        elif f.required:
            problems.append(Problem(where or "(top level)", f"missing required key '{f.encode_name}'"))
    return problems


def _convert(value: Any, typ: Any, where: str, hook: DecHook) -> tuple[Any, list[Problem]]:
    try:
        return msgspec.convert(value, typ, dec_hook=hook), []
    except msgspec.ValidationError as exc:
        message, _, at = str(exc).partition(" - at `$")
        return None, [Problem(where + at.rstrip("`"), message)]


def _unwrap(typ: Any) -> Any:
    return typing.get_args(typ)[0] if typing.get_origin(typ) is typing.Annotated else typ


def semantic_problems(settings: Settings) -> list[Problem]:
    """Checks across sections, once every section has the right shape."""
    problems: list[Problem] = []
    problems += _config_problems(settings)
    problems += _rule_problems(settings)
    problems += _target_problems(settings)
    problems += relay_problems(settings)
    problems += [Problem(where, what) for where, what in media_problems(settings.media)]
    return problems


def _config_problems(settings: Settings) -> list[Problem]:
    problems: list[Problem] = []
    seen_ids: set[str] = set()
    did_owner: dict[str, str] = {}
    for i, cfg in enumerate(settings.sms_configs):
        where = f"sms_configs[{i}]"
        if cfg.id in seen_ids:
            problems.append(Problem(f"{where}.id", f"duplicate SMS configuration id '{cfg.id}'"))
        seen_ids.add(cfg.id)
        if not cfg.dids:
            problems.append(Problem(f"{where}.dids", "an SMS configuration needs at least one DID"))
        for did in cfg.dids:
            if did in did_owner:
                problems.append(Problem(f"{where}.dids", f"{did} is already owned by '{did_owner[did]}'"))
            did_owner.setdefault(did, cfg.id)
        if len(cfg.webhook_token.reveal()) < MIN_TOKEN_LENGTH:
            problems.append(
                Problem(f"{where}.webhook_token", f"too short: use at least {MIN_TOKEN_LENGTH} random characters")
            )
        if cfg.sender_id:
            problems += _did_problems(settings, cfg, [cfg.sender_id], f"{where}.sender_id")
        if settings.pbx_target(cfg.tenant) is None:
            problems.append(Problem(f"{where}.tenant", f"no pbx_targets entry for tenant '{cfg.tenant}'"))
    if not settings.sms_configs:
        problems.append(Problem("sms_configs", "no SMS configuration: the bridge would have nothing to do"))
    return problems


def _rule_problems(settings: Settings) -> list[Problem]:
    problems: list[Problem] = []
    for i, rule in enumerate(settings.inbound_rules):
        cfg: SmsConfig | None = settings.sms_config(rule.config)
        where = f"inbound_rules[{i}]"
        if cfg is None:
            problems.append(Problem(f"{where}.config", f"no SMS configuration with id '{rule.config}'"))
        elif rule.did != "*":
            problems += _did_problems(settings, cfg, [rule.did], f"{where}.did")
        if rule.from_pattern is not None:
            problems += _glob_problems([rule.from_pattern], f"{where}.from_pattern")
    for i, out in enumerate(settings.outbound_rules):
        where = f"outbound_rules[{i}]"
        cfg = settings.sms_config(out.config)
        if cfg is None:
            problems.append(Problem(f"{where}.config", f"no SMS configuration with id '{out.config}'"))
        else:
            problems += _did_problems(settings, cfg, out.dids, f"{where}.dids")
            if out.default_did is not None:
                problems += _did_problems(settings, cfg, [out.default_did], f"{where}.default_did")
                if out.dids and out.default_did not in out.dids:
                    problems.append(Problem(f"{where}.default_did",
                                            f"{out.default_did} is not among the rule's own dids"))
        problems += _glob_problems(out.destinations, f"{where}.destinations")
    return problems


GLOB_CHARS = re.compile(r"^[+0-9*?\[\]!-]+$")


def _did_problems(settings: Settings, cfg: SmsConfig, dids: list[str], where: str) -> list[Problem]:
    """Each DID must be one the configuration owns; say whose it is when it is another's."""
    problems = []
    for did in dids:
        if did in cfg.dids:
            continue
        owner = next((c for c in settings.sms_configs if did in c.dids), None)
        whose = "" if owner is None else (
            f" (it belongs to configuration '{owner.id}'"
            + ("" if owner.tenant == cfg.tenant else f" of tenant '{owner.tenant}'") + ")")
        problems.append(Problem(where, f"{did} is not a DID of configuration '{cfg.id}'{whose}"))
    return problems


def _glob_problems(patterns: list[str], where: str) -> list[Problem]:
    """Patterns are shell-style globs matched against E.164 numbers (`+12065550100`)."""
    problems = []
    for pattern in patterns:
        if not GLOB_CHARS.match(pattern):
            why = "only digits, '+' and the glob characters * ? [ ] ! - are allowed"
        elif not pattern.startswith(("+", "*", "?", "[")):
            why = "numbers are matched in E.164, which starts with '+': write e.g. '+1206*'"
        elif pattern.count("[") != pattern.count("]"):
            why = "unbalanced [ ]"
        else:
            continue
        problems.append(Problem(where, f"invalid pattern {pattern!r}: {why}"))
    return problems


def _target_problems(settings: Settings) -> list[Problem]:
    """A tenant's targets are an ordered list (first, then fallbacks, plus `always` email copies):
    several are fine, but an email target must know where to write."""
    problems: list[Problem] = []
    for i, target in enumerate(settings.pbx_targets):
        if isinstance(target, EmailTarget) and not (target.recipients or target.default_recipient):
            problems.append(Problem(f"pbx_targets[{i}].recipients",
                                    "an email target needs recipients or a default_recipient"))
    return problems


def relay_problems(settings: Settings) -> list[Problem]:
    """Relay credentials: unique, strong, for a tenant with SMS configurations, and never the
    real Flowroute keys (a PBX holding those could bypass the bridge)."""
    problems: list[Problem] = []
    flowroute_keys = {k.reveal() for c in settings.sms_configs for k in (c.access_key, c.secret_key)}
    seen: set[str] = set()
    for i, client in enumerate(settings.relay_clients):
        where = f"relay_clients[{i}]"
        if client.access_key in seen:
            problems.append(Problem(f"{where}.access_key", f"'{client.access_key}' is used by another client"))
        seen.add(client.access_key)
        if not settings.configs_of(client.tenant):
            problems.append(Problem(f"{where}.tenant", f"tenant '{client.tenant}' has no SMS configuration"))
        if len(client.secret_key.reveal()) < MIN_TOKEN_LENGTH:
            problems.append(Problem(f"{where}.secret_key",
                                    f"too short: use at least {MIN_TOKEN_LENGTH} random characters"))
        if {client.access_key, client.secret_key.reveal()} & flowroute_keys:
            problems.append(Problem(where, "relay credentials must not be Flowroute's own keys: issue new ones"))
        problems += [Problem(at, what) for at, what in
                     network_problems(client.dlr_callback_networks, f"{where}.dlr_callback_networks")]
    keys = [("relay.id_key", settings.relay.id_key)] + [
        (f"relay.previous_id_keys[{n}]", key) for n, key in enumerate(settings.relay.previous_id_keys)]
    problems += [Problem(where, f"too short: use at least {MIN_ID_KEY_LENGTH} random characters")
                 for where, key in keys if key is not None and len(key.reveal()) < MIN_ID_KEY_LENGTH]
    return problems

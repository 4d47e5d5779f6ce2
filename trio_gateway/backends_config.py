"""The `[[backends]]` section of the config file: parsed, validated and diffed, with no I/O.

One entry per backend, named: the name is the backend's identity (its metrics and log
label, what a reload diffs on), so it never changes while the backend serves, unlike a
worker's id or a pod's address. `--worker` URLs become entries too, named by their URL as
they always were, so the rest of the gateway sees one kind of thing.

Secrets are never written in the file: an entry names where its key is (`api_key_env`, an
environment variable; `api_key_file`, a file), and `resolve_keys` reads it once, at load and
at each reload, so that a rotated key is a changed entry. The key stays out of every repr.

Aliases: `served name -> backend name`. A client asks for the served name; the request goes
to the backend under its own name, and the answer (and `/v1/models`) says the served name
again. An aliased backend name is served only under its aliases, so that `/v1/models` lists
each model once. A discovered backend (DNS, later) would expand one entry into several
addresses that share everything here but the URL; nothing below assumes one address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from trio_gateway.backend_urls import WORKER_SCHEMES, BadURL, check_backend_url, masked, redact

# Keys an entry may have; anything else is a typo the operator wants to hear about.
BACKEND_KEYS = (
    "name",
    "url",
    "api_key_env",
    "api_key_file",
    "capacity",
    "weight",
    "models",
    "aliases",
    "max_model_len",
)


class BackendsError(ValueError):
    """A bad `[[backends]]` entry; one line naming the key (`backends[1].weight: ...`)."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One backend as configured. Equal specs mean nothing to do on a reload; a spec that
    differs in anything (the key included) is a changed backend, replaced."""

    name: str
    url: str
    api_key_env: str = ""
    api_key_file: str = ""
    # Max requests in flight; None: the kind's default (a worker's hello, an upstream's
    # `--upstream-max-inflight`).
    capacity: int | None = None
    weight: int = 1
    models: tuple[str, ...] = ()  # backend names; empty: what the backend lists
    aliases: tuple[tuple[str, str], ...] = ()  # (served name, backend name)
    max_model_len: tuple[tuple[str, int], ...] = ()  # (served name, context length)
    # The key read from `api_key_env` or `api_key_file` (`resolve_keys`); never shown.
    api_key: str = field(default="", repr=False)
    from_flags: bool = False  # a `--worker` URL: the global key and token apply

    @property
    def is_worker(self) -> bool:
        return self.url.split("://", 1)[0] in WORKER_SCHEMES

    @property
    def declares_models(self) -> bool:
        """Whether the entry says what the backend serves (else its own list decides)."""
        return bool(self.models or self.aliases)

    def alias_map(self) -> dict[str, str]:
        return dict(self.aliases)

    def context_lengths(self) -> dict[str, int]:
        return dict(self.max_model_len)

    def backend_models(self) -> tuple[str, ...]:
        """The names the backend itself must serve: `models` and every alias target."""
        seen = dict.fromkeys(self.models)
        for _, target in self.aliases:
            seen.setdefault(target)
        return tuple(seen)

    def described(self) -> dict[str, Any]:
        """The entry as `check-config` prints it: where its key comes from, never the key
        (nor a password in the URL)."""
        shown: dict[str, Any] = {"name": self.name, "url": masked(self.url)}
        if self.api_key_env:
            shown["api_key_env"] = self.api_key_env
        if self.api_key_file:
            shown["api_key_file"] = self.api_key_file
        if self.capacity is not None:
            shown["capacity"] = self.capacity
        shown["weight"] = self.weight
        if self.models:
            shown["models"] = list(self.models)
        if self.aliases:
            shown["aliases"] = dict(self.aliases)
        if self.max_model_len:
            shown["max_model_len"] = dict(self.max_model_len)
        return shown


def served_names(listed: Iterable[str], aliases: Mapping[str, str]) -> tuple[str, ...]:
    """What clients may ask for, given the backend's own names: each aliased name replaced
    by its aliases (in the order they were given), the others as they are."""
    by_target: dict[str, list[str]] = {}
    for served, target in aliases.items():
        by_target.setdefault(target, []).append(served)
    out: dict[str, None] = {}
    for name in listed:
        for served in by_target.get(name, (name,)):
            out.setdefault(served)
    return tuple(out)


def parse_backends(raw: object) -> tuple[BackendSpec, ...]:
    """The `backends` value of a TOML document (an array of tables), validated."""
    if not isinstance(raw, list):
        raise BackendsError("backends: expected an array of tables ([[backends]])")
    specs = tuple(_parse_entry(index, entry) for index, entry in enumerate(raw))
    check_unique(specs)
    return specs


def specs_from_urls(urls: Sequence[str]) -> tuple[BackendSpec, ...]:
    """`--worker` URLs as unnamed entries, named by their URL (without a password)."""
    return tuple(BackendSpec(name=redact(url), url=url, from_flags=True) for url in urls)


def check_unique(specs: Sequence[BackendSpec]) -> None:
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if spec.name in seen:
            where = "workers" if spec.from_flags else f"backends[{index}].name"
            raise BackendsError(f"{where}: {spec.name!r} is already the name of a backend")
        seen.add(spec.name)


def resolve_keys(
    specs: Sequence[BackendSpec],
    environ: Mapping[str, str],
    read_file: Callable[[str], str],
) -> tuple[BackendSpec, ...]:
    """Each entry with its key read from where it names; `read_file` raises OSError."""
    resolved = []
    for index, spec in enumerate(specs):
        key = ""
        if spec.api_key_env:
            if spec.api_key_env not in environ:
                raise BackendsError(f"backends[{index}].api_key_env: {spec.api_key_env} is not set")
            key = environ[spec.api_key_env].strip()
        elif spec.api_key_file:
            try:
                key = read_file(spec.api_key_file).strip()
            except OSError as error:
                raise BackendsError(
                    f"backends[{index}].api_key_file: cannot read {spec.api_key_file}: "
                    f"{error.strerror or error}"
                ) from None
        if (spec.api_key_env or spec.api_key_file) and not key:
            raise BackendsError(f"backends[{index}]: the key of {spec.name!r} is empty")
        resolved.append(replace(spec, api_key=key))
    return tuple(resolved)


@dataclass(frozen=True, slots=True)
class BackendsDiff:
    """What a reload does, by name: start `added`, drain `removed`, replace `changed`."""

    added: tuple[BackendSpec, ...] = ()
    removed: tuple[BackendSpec, ...] = ()
    changed: tuple[BackendSpec, ...] = ()  # the new definitions
    unchanged: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.changed)

    def summary(self) -> str:
        parts = [
            f"{label} {', '.join(spec.name for spec in specs)}"
            for label, specs in (
                ("added", self.added),
                ("removed", self.removed),
                ("changed", self.changed),
            )
            if specs
        ]
        return "; ".join(parts) or "no change"


def diff_backends(old: Sequence[BackendSpec], new: Sequence[BackendSpec]) -> BackendsDiff:
    """Compare two configurations by name; order is kept from `new` (and `old` for removed)."""
    before = {spec.name: spec for spec in old}
    after = {spec.name: spec for spec in new}
    return BackendsDiff(
        added=tuple(spec for name, spec in after.items() if name not in before),
        removed=tuple(spec for name, spec in before.items() if name not in after),
        changed=tuple(
            spec for name, spec in after.items() if name in before and before[name] != spec
        ),
        unchanged=tuple(
            name for name, spec in after.items() if name in before and before[name] == spec
        ),
    )


# -- one entry -------------------------------------------------------------------------


def _parse_entry(index: int, entry: object) -> BackendSpec:
    where = f"backends[{index}]"
    if not isinstance(entry, dict):
        raise BackendsError(f"{where}: expected a table with name and url")
    if "api_key" in entry:
        raise BackendsError(
            f"{where}.api_key: a key is never written in the file; "
            "name where it is with api_key_env or api_key_file"
        )
    for key in entry:
        if key not in BACKEND_KEYS:
            raise BackendsError(
                f"{where}.{key}: unknown key; expected one of {', '.join(BACKEND_KEYS)}"
            )
    name = _text(entry, "name", where, required=True)
    url = _text(entry, "url", where, required=True)
    try:
        check_backend_url(url)
    except BadURL as error:
        raise BackendsError(f"{where}.url: {error}") from None
    api_key_env = _text(entry, "api_key_env", where)
    api_key_file = _text(entry, "api_key_file", where)
    if api_key_env and api_key_file:
        raise BackendsError(f"{where}.api_key_file: give api_key_env or api_key_file, not both")
    capacity = _positive(entry, "capacity", where)
    weight = _positive(entry, "weight", where)
    models = _names(entry, "models", where)
    aliases = _table(entry, "aliases", where, str)
    lengths = _table(entry, "max_model_len", where, int)
    is_worker = url.split("://", 1)[0] in WORKER_SCHEMES
    if is_worker and aliases:
        raise BackendsError(
            f"{where}.aliases: only an http(s) upstream takes aliases; "
            "a worker serves its models under their own names"
        )
    for served, target in aliases:
        if not served or not target:
            raise BackendsError(f"{where}.aliases: a model name is empty")
        if served in models:
            raise BackendsError(
                f"{where}.aliases.{served}: {served!r} is also in models; "
                "a name is served once, as itself or as an alias"
            )
    served = served_names(models + tuple(t for _, t in aliases), dict(aliases))
    for model, length in lengths:
        if length < 1:
            raise BackendsError(f"{where}.max_model_len.{model}: must be at least 1, got {length}")
        if (models or aliases) and model not in served:
            raise BackendsError(
                f"{where}.max_model_len.{model}: not a model this backend serves "
                f"({', '.join(served)})"
            )
    return BackendSpec(
        name=name,
        url=url,
        api_key_env=api_key_env,
        api_key_file=api_key_file,
        capacity=capacity,
        weight=1 if weight is None else weight,
        models=models,
        aliases=aliases,
        max_model_len=lengths,
    )


def _text(entry: dict[str, Any], key: str, where: str, *, required: bool = False) -> str:
    value = entry.get(key)
    if value is None:
        if required:
            raise BackendsError(f"{where}.{key}: required")
        return ""
    if not isinstance(value, str) or not value.strip():
        raise BackendsError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _positive(entry: dict[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BackendsError(f"{where}.{key}: expected a whole number of at least 1, got {value!r}")
    return value


def _names(entry: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BackendsError(f"{where}.{key}: expected a list of model names, got {value!r}")
    if len(set(value)) != len(value):
        raise BackendsError(f"{where}.{key}: a model is listed twice")
    return tuple(value)


def _table(entry: dict[str, Any], key: str, where: str, kind: type) -> tuple[tuple[Any, Any], ...]:
    value = entry.get(key, {})
    if not isinstance(value, dict):
        raise BackendsError(f"{where}.{key}: expected a table of model = value")
    for name, item in value.items():
        if not isinstance(item, kind) or isinstance(item, bool):
            raise BackendsError(
                f"{where}.{key}.{name}: expected {'a model name' if kind is str else 'a number'}"
                f", got {item!r}"
            )
    return tuple(value.items())

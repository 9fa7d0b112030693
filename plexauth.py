"""plexauth: the Plex authentication API in one file.

Sign in to plex.tv (with a 2FA code, or without a password through a PIN
entered at https://plex.tv/link), read the account behind a token, keep it
alive or revoke it, mint a transient token on a Plex Media Server, and get the
connection details and token of a source the server knows.  The only
dependency is urllib3.

Example::

    import dataclasses, plexauth

    config = plexauth.Config(client_identifier="my-cron-job-7f3c")
    account = plexauth.post_users_sign_in_data(config, "me@example.com", "s3cret")
    config = dataclasses.replace(config, token=account.auth_token)
    print(plexauth.get_token_details(config).username)

Tokens and passwords never appear in a repr, an exception, a log line or a
URL: tokens travel in the ``X-Plex-Token`` header only.

The same file is a command line for scripts and cron jobs: ``python -m
plexauth --help`` (or ``python plexauth.py --help`` when vendored).
"""

from __future__ import annotations

import array
import base64
import binascii
import bisect
import codecs
import contextlib
import copy
import dataclasses
import datetime
import enum
import errno
import functools
import hashlib
import http
import http.client
import io
import itertools
import json
import logging
import math
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
import zlib
from typing import Any, Callable, Iterator, Mapping, NoReturn, Sequence, TypeVar, cast

import urllib3

__version__ = "0.1.0"

__all__ = [
    # constants
    "MAX_BODY_BYTES",
    "MAX_RETRY_WAIT_SECONDS",
    "JWT_SCOPE",
    # configuration
    "Config",
    # enums
    "GetTransientTokenQueryParamType",
    "Scope",
    # models
    "Connection",
    "SourceConnectionInformation",
    "Service",
    "Subscription",
    "UserProfile",
    "UserPlexAccount",
    "Pin",
    "Resource",
    "HomeUser",
    "DeviceKey",
    "PlexJWT",
    # errors
    "PlexAuthError",
    "APIError",
    "BadRequestError",
    "UnauthorizedError",
    "TwoFactorRequiredError",
    "RateLimitedError",
    "ResponseError",
    "TransportError",
    "PinExpiredError",
    "HomePinRequiredError",
    "ServerUnreachableError",
    # operations
    "get_transient_token",
    "get_source_connection_information",
    "get_token_details",
    "post_users_sign_in_data",
    # password-less sign-in and token upkeep
    "create_pin",
    "check_pin",
    "wait_for_pin",
    "pin_auth_url",
    "ping",
    "sign_out",
    # the account's servers and Home users
    "get_resources",
    "connect",
    "get_home_users",
    "switch_home_user",
    # JWT sign-in (the extra "jwt": cryptography)
    "generate_device_key",
    "save_device_key",
    "load_device_key",
    "register_device_key",
    "get_jwt",
    "verify_jwt",
    # command line
    "main",
]

# =============================================================================
# Constants
# =============================================================================

_log = logging.getLogger("plexauth")
_log.addHandler(logging.NullHandler())

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# Patterns that a run may never need (here, integers sent as text: XML's) are
# kept as text, which re compiles on first use and caches (see _ESCAPES).
_INT_TEXT = r"[+-]?[0-9]{1,18}"
_INT_RANGE = 2**63

# X-Plex-* headers, in the order they are sent, from Config fields.
_PLEX_HEADERS = (
    ("client_identifier", "X-Plex-Client-Identifier"),
    ("product", "X-Plex-Product"),
    ("version", "X-Plex-Version"),
    ("platform", "X-Plex-Platform"),
    ("platform_version", "X-Plex-Platform-Version"),
    ("device", "X-Plex-Device"),
    ("device_name", "X-Plex-Device-Name"),
    ("model", "X-Plex-Model"),
    ("device_vendor", "X-Plex-Device-Vendor"),
    ("marketplace", "X-Plex-Marketplace"),
)
_TOKEN_HEADER = "X-Plex-Token"  # noqa: S105 (a header name)

# Where a user approves a PIN: its 4-character code, or a strong PIN's auth URL.
_LINK_URL = "https://plex.tv/link"
_AUTH_APP_URL = "https://app.plex.tv/auth"
# plex.tv asks PIN pollers to keep to about one request a second.
_MIN_PIN_INTERVAL = 1.0

_T = TypeVar("_T")

# =============================================================================
# Enums
# =============================================================================


class GetTransientTokenQueryParamType(str, enum.Enum):
    """The ``type`` of a transient token; ``delegation`` is the only one."""

    DELEGATION = "delegation"


class Scope(str, enum.Enum):
    """The ``scope`` of a transient token; ``all`` is the only one."""

    ALL = "all"


# =============================================================================
# The shared base of Config and the models
# =============================================================================


class _Record:
    """Base of Config and the models, which are frozen dataclasses: a repr
    that shows secret fields as ``'***'``, and pickles and copies that carry
    the fields only (not what calls work out and keep beside them)."""

    def __getstate__(self) -> dict[str, Any]:
        # _prepared (Config) holds a pool; _secrets (models) the request's secrets.
        return {name: value for name, value in self.__dict__.items() if not name.startswith("_")}

    # A copy in this process keeps the secrets of the answer its model came
    # from, to mask (a pickle, which may leave the process, carries none).
    def __copy__(self) -> Any:
        return self._copied(self.__getstate__())

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self._copied(copy.deepcopy(self.__getstate__(), memo))

    def _copied(self, state: dict[str, Any]) -> Any:
        copied = object.__new__(type(self))
        copied.__dict__.update(state)
        if "_secrets" in self.__dict__:
            copied.__dict__["_secrets"] = self.__dict__["_secrets"]
        return copied

    def __repr__(self) -> str:
        # The outermost repr masks the whole text once, with the secrets of
        # every model in it (each decoded model keeps its request's).
        outermost = _local.repr_secrets is None
        gathered: set[str] = set() if _local.repr_secrets is None else _local.repr_secrets
        _local.repr_secrets = gathered
        gathered.update(self.__dict__.get("_secrets") or ())  # set when decoded from an answer
        try:
            parts = []
            for field in dataclasses.fields(self):  # type: ignore[arg-type]
                if not field.repr:
                    continue
                value = self.__dict__[field.name]
                if field.metadata.get("secret") and value is not None:
                    gathered.add(str(value))  # also where the server repeated it (a connection's URI)
                    parts.append(f"{field.name}='***'")
                else:
                    parts.append(f"{field.name}={value!r}")
        finally:
            if outermost:
                _local.repr_secrets = None
        text = f"{type(self).__name__}({', '.join(parts)})"
        secrets = tuple(sorted(secret for secret in gathered if secret)) if outermost else ()
        return _shown(text, secrets, keys=False) if secrets else text

    __str__ = __repr__


# =============================================================================
# Configuration
# =============================================================================


def _check_text(label: str, value: Any, *, optional: bool = False, secret: bool = False, header: bool = False) -> Any:
    """``value`` if it is usable text, else TypeError/ValueError naming ``label``.

    Header values must also not be blank nor hold control characters (CR/LF
    would split the header); form and query values are percent-encoded.
    """
    if value is None and optional:
        return value
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a str, not {type(value).__name__}")
    shown = "" if secret else f", got {value!r}"
    if not (value.strip() if header else value):
        raise ValueError(f"{label} must not be empty{shown}")
    if header and _CONTROL_CHARS.search(value):
        raise ValueError(f"{label} must not contain control characters{shown}")
    if not _is_text(value):
        raise ValueError(f"{label} must not contain lone surrogates{shown}")
    if secret and len(value.encode("utf-8")) > _MAX_SECRET_LENGTH:
        raise ValueError(f"{label} must not be over {_MAX_SECRET_LENGTH // 1024} KiB long (in UTF-8)")
    return value


#: A secret (a token, a password, a code) longer than this in UTF-8 is
#: refused, and a token an answer holds is no token: no server takes a
#: header line that long (nginx's limit is 8 KiB; plex.tv's JWTs have a few
#: hundred characters), and every answer is searched for a request's secrets.
_MAX_SECRET_LENGTH = 8 * 1024


def _is_text(value: str) -> bool:
    """False for strings with lone surrogates, which no header or URL can carry."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_seconds(label: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{label} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{label} must be a positive number of seconds, got {value!r}")
    return float(value)


def _check_url(name: str, value: Any) -> None:
    """An http(s) URL with a host."""
    label = f"Config.{name}"
    if not isinstance(value, str):
        raise TypeError(f"{label} must be a str, not {type(value).__name__}")
    if not value.strip() or _CONTROL_CHARS.search(value) or not _is_text(value):
        raise ValueError(f"{label} must be a URL without blanks, control characters or lone surrogates, "
                         f"got {_url_shown(value)!r}")
    try:
        url = urllib3.util.parse_url(value)
    except urllib3.exceptions.LocationParseError:
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{label} must be an http:// or https:// URL with a host, got {_url_shown(value)!r}")
    if url.query is not None or url.fragment is not None or url.auth is not None:
        raise ValueError(f"{label} must not carry credentials, a query or a fragment, got {_url_shown(value)!r}")


def _url_shown(value: str) -> str:
    """``value`` as a message shows it: without its query, fragment and
    credentials, where Plex Web's "View XML" puts the token.  (Worked out
    for a message only: a URL that is fine is never shown.)"""
    scheme, sep, rest = value.partition("://")
    if not sep:
        scheme, rest = "", value
    # Credentials first, to the last "@": a password may hold "?" or "#".
    return scheme + sep + re.split(r"[?#]", rest.rpartition("@")[2], maxsplit=1)[0]


@dataclasses.dataclass(frozen=True, repr=False)
class Config(_Record):
    """Who is calling, which servers, and how to talk to them.

    Frozen and validated: a wrong type raises ``TypeError``, a wrong value
    ``ValueError``, each naming the field (a secret's value is never shown).
    ``dataclasses.replace(config, token=...)`` gives a changed copy.

    Example::

        config = Config(client_identifier="my-cron-job-7f3c", token=token,
                        server_url="http://192.0.2.10:32400")

    ``timeout`` bounds each connect and each read; ``total_timeout`` bounds
    the whole call (every try, redirect, retry wait and read), so that a
    server that trickles its answer a byte at a time, or sends interim
    answers without end, cannot hold a call longer.  ``clients_url`` is
    clients.plex.tv's API, for JWT sign-in (``get_jwt``).
    """

    client_identifier: str
    token: str | None = dataclasses.field(default=None, metadata={"secret": True})
    server_url: str = "http://localhost:32400"
    plex_tv_url: str = "https://plex.tv/api/v2"
    product: str = "plexauth"
    version: str = __version__
    platform: str | None = None
    platform_version: str | None = None
    device: str | None = None
    device_name: str | None = None
    model: str | None = None
    device_vendor: str | None = None
    marketplace: str | None = None
    timeout: float = 10.0
    retries: int = 2
    verify: bool | str = True
    total_timeout: float = 60.0
    clients_url: str = "https://clients.plex.tv/api/v2"

    def __post_init__(self) -> None:
        for name, _header in _PLEX_HEADERS:
            required = name in ("client_identifier", "product", "version")
            _check_text(f"Config.{name}", getattr(self, name), optional=not required, header=True)
        _check_text("Config.token", self.token, optional=True, secret=True, header=True)
        _check_url("server_url", self.server_url)
        _check_url("plex_tv_url", self.plex_tv_url)
        _check_url("clients_url", self.clients_url)
        _check_seconds("Config.timeout", self.timeout)
        _check_seconds("Config.total_timeout", self.total_timeout)
        if isinstance(self.retries, bool) or not isinstance(self.retries, int):
            raise TypeError(f"Config.retries must be an int, not {type(self.retries).__name__}")
        if not 0 <= self.retries <= 10:
            raise ValueError(f"Config.retries must be between 0 and 10, got {self.retries!r}")
        if isinstance(self.verify, str):
            if not os.path.isfile(self.verify):
                raise ValueError(f"Config.verify names no CA bundle file: {self.verify!r}")
        elif not isinstance(self.verify, bool):
            raise TypeError(f"Config.verify must be a bool or a CA bundle path, not {type(self.verify).__name__}")

    @classmethod
    def from_env(cls, **overrides: Any) -> Config:
        """Build a Config from ``PLEX_CLIENT_IDENTIFIER``, ``PLEX_TOKEN``,
        ``PLEX_SERVER_URL``, ``PLEX_TV_URL`` and ``PLEX_CLIENTS_URL``;
        keyword arguments win.

        Unset or empty variables are ignored.  Raises ``ValueError`` when no
        client identifier is given either way.

        Example::

            config = Config.from_env(timeout=5.0)
        """
        values: dict[str, Any] = {}
        for name, variable in (("client_identifier", "PLEX_CLIENT_IDENTIFIER"), ("token", "PLEX_TOKEN"),
                               ("server_url", "PLEX_SERVER_URL"), ("plex_tv_url", "PLEX_TV_URL"),
                               ("clients_url", "PLEX_CLIENTS_URL")):
            if os.environ.get(variable):
                values[name] = os.environ[variable]
        values.update(overrides)
        if "client_identifier" not in values:
            raise ValueError("Config.client_identifier is required: set PLEX_CLIENT_IDENTIFIER or pass it")
        return cls(**values)


# =============================================================================
# Models
# =============================================================================
# Decoding is driven by field metadata: each field names its wire key and a
# converter.  Converters accept the JSON type and the XML attribute string
# (XML has only strings) and give None for anything else, so one odd optional
# value never rejects a whole answer.  Required fields raise _Invalid.


class _Invalid(ValueError):
    """The answer is well-formed but lacks what the model needs."""


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int | None:
    if value.__class__ is not int:  # the exact class: most integers of most answers need no more checks
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        elif isinstance(value, str) and re.fullmatch(_INT_TEXT, value.strip()):
            return int(value)
        else:  # None, bool, and whatever neither JSON nor XML gives as a number
            return None
    # Plex's integers are 64-bit; a larger one (1e308 is a 1024-bit int) is not an answer.
    return value if -_INT_RANGE <= value < _INT_RANGE else None


def _bool(value: Any) -> bool | None:
    if value is None or isinstance(value, bool):
        return value
    if value in (0, 1, "0", "1"):
        return bool(int(value))
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _time(value: Any) -> datetime.datetime | None:
    """An aware UTC time from Unix seconds (accounts) or ISO 8601 text (PINs)."""
    utc = datetime.timezone.utc
    seconds = _int(value)
    try:
        if seconds is not None:
            return datetime.datetime.fromtimestamp(seconds, tz=utc)
        if isinstance(value, str):
            # Before 3.11, fromisoformat does not read a trailing "Z".
            when = datetime.datetime.fromisoformat(value[:-1] + "+00:00" if value[-1:] in ("Z", "z") else value)
            return (when if when.tzinfo else when.replace(tzinfo=utc)).astimezone(utc)
    except (OverflowError, OSError, ValueError):
        pass
    return None


def _token(value: Any) -> str | None:
    """A token: text that can travel in a header, and not too long for one
    (none other can be used, or revoked).  A pending PIN's token is null in
    JSON and "" in XML."""
    if (not isinstance(value, str) or not value.strip() or _CONTROL_CHARS.search(value) or not _is_text(value)
            or len(value.encode("utf-8")) > _MAX_SECRET_LENGTH):
        return None
    if _made_of_secrets(value):
        raise _Invalid("a token in it holds a secret the request sent (its password, code or token)")
    return value


#: Secrets shorter than this (a Home PIN) are looked for only in a token
#: made of little else: a random token holds four given digits about once
#: in a million.
_CONTAINED_SECRET_CHARS = 6
#: A token's runs of base64 or hex that are decoded at most (its readings
#: and what they decode to); past them it is refused.
_MAX_DECODED_TOKEN_CHARS = 4 * _MAX_SECRET_LENGTH


def _token_runs(text: str) -> Iterator[str]:
    """The runs of base64 or hex in a reading of a token: as long as the
    base64 of a Home PIN, hex on its own too ("tok-" and hex is one run of
    base64), and base64 in padded pieces ("aHVudGU=cjJz...", which a decoder
    reads on through).  Each found in time linear in ``text``."""
    yield from re.findall("[A-Za-z0-9+/_-]{6,}", text)
    yield from re.findall("[0-9a-fA-F]{8,}", text)
    # (Not "[...]+(?:=+[...]+)+": from each start in a long run without "=" it
    # would read to the run's end and back, in time quadratic in its length.)
    padded = (run.strip("=") for run in re.findall("[A-Za-z0-9+/_=-]{3,}", text))
    yield from (run for run in padded if "=" in run)


def _made_of_secrets(token: str) -> bool:
    """Whether ``token``, sent in an answer, holds a secret its request sent:
    the command line prints a new token when asked, and would print that
    secret with it.  The token sent may come back as it is (the account
    call gives it back, and an owner's server may have it), but in no other
    form, nor inside another."""
    if not _local.secrets:  # outside a call
        return False
    sent, *others = _local.secrets
    if token != sent:
        others.append(sent)
    looked_for = tuple(secret for secret in others if len(secret) >= _CONTAINED_SECRET_CHARS)
    short = tuple(secret for secret in others if 0 < len(secret) < _CONTAINED_SECRET_CHARS)
    if not looked_for and not short:  # the account call: its token given back, nothing else sent
        return False
    # As a reader reads it: escapes undone, without markup, gaps or invisible
    # characters, its letters plain; and each run of base64 or hex in it
    # decoded, up to _DECODE_DEPTH times over (a secret's UTF-16, its base64:
    # one encoded twice, a JWT's claims), which _mask does not undo, when its
    # bytes can hold one.  Not what _reveals cannot rule out: a long token (a
    # JWT with many claims) is more than it reads through, and would be refused.
    readings = _read_token(token)
    if readings is None:
        return True
    shortest = 0 if short else _byte_forms(looked_for).shortest
    budget = _MAX_DECODED_TOKEN_CHARS
    texts = readings
    for _ in range(_DECODE_DEPTH):
        runs = dict.fromkeys(run for text in texts for run in _token_runs(text))
        texts = []
        for run in runs:
            if 3 * (len(run) + 3) // 4 < shortest:  # a token as long as the one sent
                continue
            budget -= len(run)
            if budget < 0:  # more than can be looked through (no real token is): refused, to be safe
                return True
            for data in _decoded_bytes(run):
                # Its bytes without gaps and NULs, for the secrets' bytes read the
                # same way; as text, if it is UTF-8 (base64 twice, a JWT's claims).
                bare = data.translate(None, _BYTE_GAPS).lower()
                if looked_for and _byte_forms(looked_for).pattern.search(bare):
                    return True
                # A short secret only in bytes made of little else, as in the token.
                if short and len(_byte_forms(short).pattern.sub(b"", bare)) < min(len(bare), _CONTAINED_SECRET_CHARS):
                    return True
                # Without NULs too: text in UTF-16 (escaped: "%\x006\x008\x00...").
                for text_bytes in dict.fromkeys((data, data.replace(b"\x00", b""))):
                    with contextlib.suppress(UnicodeDecodeError):
                        decoded = _read_token(text_bytes.decode("utf-8"))
                        if decoded is None:
                            return True
                        texts += decoded
        readings += texts
    # Looked for as _reveals looks (each view of a secret read by _plain, and
    # its hex), casefolded: that spells out ligatures and sharp s (an "ffi"
    # in one character), as _mask's fold cannot.  (Its base64 is decoded above.)
    folded = [reading.casefold() for reading in readings]
    wanted = _wanted(_pieces(looked_for))
    if wanted and wanted.texts.pattern.search("\n".join(folded)):
        return True
    if wanted and wanted.numbers and not wanted.numbers.isdisjoint(
            float(number) for reading in readings for number in re.findall(_NUMBER, reading)):
        return True  # a code of digits as a number (4.82913e5); looked for only when one was sent
    wanted = _wanted(_pieces(short))
    if wanted is None:
        return False
    # Little but a short secret, as in its bytes (a PIN also as a number: 1.234e3).
    return any(len(wanted.texts.pattern.sub("", reading)) < min(len(reading), _CONTAINED_SECRET_CHARS)
               or (re.fullmatch(_NUMBER, reading) is not None and float(reading) in wanted.numbers)
               for reading in folded)


def _read_token(token: str) -> list[str] | None:
    """``token`` as a reader may read it: itself, with its escapes undone,
    without markup, and each of these as _plain reads it; None when it is
    escaped more times over than the views undo."""
    # (Most tokens hold no escape: no views made.)
    texts = [view.text for view in _views(token)] if any(start in token for start in _ESCAPE_STARTS) else [token]
    if len(texts) > _UNESCAPE_PASSES:
        return None
    texts += (unmarked for text in texts[:] for unmarked in _without_markup(text))
    texts += (undone for text in texts[:] for undone in _misread(text))
    return list(dict.fromkeys([*texts, *map(_plain, texts)]))


#: Bytes dropped from a decoded token, and from the secrets looked for in
#: it: ASCII gaps, and NULs (UTF-16 of ASCII text is its bytes and NULs).
_BYTE_GAPS = b" \t\n\r\x0b\x0c\x00"


class _ByteForms:
    """What _made_of_secrets looks for in a decoded token.  (A plain class, as _Plan.)"""

    __slots__ = ("pattern", "shortest")

    def __init__(self, pattern: re.Pattern[bytes], shortest: int) -> None:
        self.pattern = pattern  # any of the forms, the longest first
        self.shortest = shortest  # bytes that can hold one


@functools.lru_cache(maxsize=8)  # as _secret_forms
def _byte_forms(secrets: tuple[str, ...]) -> _ByteForms:
    """``secrets`` in UTF-8, UTF-16 and base64, as _made_of_secrets reads a
    decoded token: read as _plain reads them, without _BYTE_GAPS, lowered."""
    forms: set[bytes] = set()
    for secret in map(_plain, secrets):
        raw = secret.encode("utf-8", "surrogatepass")
        forms.update((raw, secret.encode("utf-16-le", "surrogatepass"), secret.encode("utf-16-be", "surrogatepass")))
        for codec in ("latin-1", "cp1252", *_LEGACY_CHARSETS):
            with contextlib.suppress(UnicodeEncodeError):
                forms.add(secret.encode(codec))
        forms.update(core.encode("ascii") for core in _base64_cores(raw))
    found = sorted({form.translate(None, _BYTE_GAPS).lower() for form in forms} - {b""}, key=len, reverse=True)
    # With nothing to find (a password of spaces), a pattern that matches nothing.
    pattern = re.compile(b"|".join(map(re.escape, found)) if found else b"(?!)")
    return _ByteForms(pattern, len(found[-1]) if found else sys.maxsize)


def _pin_token(value: Any) -> str | None:
    """A PIN's token: None while pending (null in JSON, "" in XML); any
    other value that is no usable token makes the answer unusable, not pending."""
    if value is None or value == "":
        return None
    token = _token(value)
    if token is None:
        raise _Invalid("'authToken' is not a token that can be sent")
    return token


def _nonempty(value: Any) -> str | None:
    # A PIN's code, an account's uuid: "" is as good as missing.
    return value if isinstance(value, str) and value else None


def _items(value: Any) -> list[Any]:
    """A JSON list, or an XML element that appeared once (or empty)."""
    if isinstance(value, list):
        return value
    if isinstance(value, dict) and value:
        return [value]
    return []


def _strs(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        try:
            "".join(value)  # the quickest check that every item is a str (a TypeError if not)
        except TypeError:
            pass
        else:
            return tuple(value)  # the usual JSON list
    # XML lists strings as <features><feature id="..."/></features>.
    texts = (item.get("id") if isinstance(item, dict) else item for item in _items(value))
    return tuple(text for text in texts if isinstance(text, str))


def _field(key: str, convert: Callable[[Any], Any], *, secret: bool = False, required: bool = False,
           default: Any = None, alias: str | None = None) -> Any:
    """A model field decoded from wire key ``key`` (or ``alias`` when the
    answer lacks ``key``) by ``convert``."""
    metadata = {"key": key, "convert": convert, "secret": secret, "required": required, "alias": alias}
    return dataclasses.field(default=dataclasses.MISSING if required else default, metadata=metadata)


def _raw() -> Any:
    """The ``raw`` field: the decoded object itself, left out of repr and equality."""
    return dataclasses.field(default_factory=dict, repr=False, compare=False)


_M = TypeVar("_M")
# Converters that return a value of this type unchanged: the decoder takes
# such values as they are, and skips the call (most fields of most answers).
_TAKEN_AS_IS: dict[Callable[[Any], Any], type] = {_str: str, _bool: bool}


class _Plan:
    """How to decode one model class, worked out from its fields once.  (A
    plain class: making a typing.NamedTuple took 0.1 to 0.25 ms of the import.)"""

    __slots__ = ("aliases", "fields", "required", "secret")

    def __init__(self, fields: tuple[tuple[str, str, Callable[[Any], Any], type | None, Any], ...],
                 required: tuple[tuple[str, str], ...], aliases: tuple[tuple[str, str], ...],
                 secret: tuple[str, ...]) -> None:
        # (field name, wire key, converter, the type taken as is, the value when missing)
        self.fields = fields
        self.required = required  # (field name, wire key) of those that must be there
        self.aliases = aliases  # (other wire key, wire key): another shape of the same answer
        self.secret = secret  # wire keys of the fields that hold secrets


@functools.lru_cache(maxsize=None)
def _plan(cls: type) -> _Plan:
    decoded = [(field.name, field.metadata) for field in dataclasses.fields(cls) if "key" in field.metadata]
    return _Plan(
        tuple((name, meta["key"], meta["convert"], _TAKEN_AS_IS.get(meta["convert"]), meta["convert"](None))
              for name, meta in decoded),
        tuple((name, meta["key"]) for name, meta in decoded if meta["required"]),
        tuple((meta["alias"], meta["key"]) for _, meta in decoded if meta["alias"]),
        tuple(meta["key"] for _, meta in decoded if meta["secret"]),
    )


def _build(cls: type[_M], data: Any) -> _M:
    """Decode the JSON object (or XML element) ``data`` into model ``cls``."""
    if not isinstance(data, dict):
        raise _Invalid(f"expected an object for {cls.__name__}, got {type(data).__name__}")
    model_class: Any = cls
    plan = _plan(model_class)
    found = data
    for alias, key in plan.aliases:
        if key not in found and alias in found:
            found = {**found, key: found[alias]}
    values = {}
    for name, key, convert, as_is, missing in plan.fields:
        value = found.get(key)
        values[name] = value if value.__class__ is as_is else missing if value is None else convert(value)
    for name, key in plan.required:
        if values[name] is None:
            raise _Invalid(f"{key!r} is missing or has the wrong type")
    # What a server sends under a secret key (even a value no use as a token)
    # joins the answer's secrets: plex.tv may repeat one resource's token in
    # a connection of it, or of another.
    secrets = _local.answer_secrets
    for key in plan.secret:
        value = found.get(key)
        if isinstance(value, str):
            if value:
                secrets.append(value)
        elif value is not None:
            secrets += _secret_texts(value)
    # As pickle restores an instance: the values are already checked and
    # converted, and models have no __post_init__ to run.
    model: _M = object.__new__(model_class)
    model.__dict__.update(values, raw=data, _secrets=secrets)
    return model


def _secret_texts(value: Any) -> list[str]:
    """The strings and numbers in ``value``, sent under a secret key in a
    form no model takes (a number, a list: an XML element given twice), as
    the server may repeat them elsewhere."""
    found, left = [], [value]
    while left:  # the parser bounds how many values a body holds
        item = left.pop()
        if isinstance(item, dict):
            left += item.values()
        elif isinstance(item, list):
            left += item
        elif isinstance(item, str):
            found += [item] if item else []
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            found.append(repr(item))
    return found


def _answer_secrets(*models: Any) -> tuple[str, ...]:
    """The secrets of the answers ``models`` were decoded from (what the
    request sent, what the server sent under secret keys): any field of any
    model of an answer may repeat them.  None for a model built by hand."""
    lists = {id(found): found for found in (model.__dict__.get("_secrets") for model in models) if found}
    return tuple(dict.fromkeys(secret for found in lists.values() for secret in found))


def _one(cls: type[_M]) -> Callable[[Any], _M | None]:
    def convert(value: Any) -> _M | None:
        if isinstance(value, list):
            value = value[0] if value else None
        return _build(cls, value) if isinstance(value, dict) else None

    return convert


def _many(cls: type[_M]) -> Callable[[Any], tuple[_M, ...]]:
    def convert(value: Any) -> tuple[_M, ...]:
        return tuple(_build(cls, item) for item in _items(value) if isinstance(item, dict))

    return convert


@dataclasses.dataclass(frozen=True, repr=False)
class Connection(_Record):
    """One way to reach a source: ``uri`` is ready to use."""

    protocol: str | None = _field("protocol", _str)
    address: str | None = _field("address", _str)
    port: int | None = _field("port", _int)
    uri: str | None = _field("uri", _str)
    local: bool | None = _field("local", _bool)
    relay: bool | None = _field("relay", _bool)
    ipv6: bool | None = _field("IPv6", _bool)
    raw: Mapping[str, Any] = _raw()


@dataclasses.dataclass(frozen=True, repr=False)
class SourceConnectionInformation(_Record):
    """A source the server knows: its name, id, access token and connections."""

    name: str | None = _field("name", _str)
    client_identifier: str | None = _field("clientIdentifier", _str)
    access_token: str | None = _field("accessToken", _token, secret=True)
    connections: tuple[Connection, ...] = _field("Connection", _many(Connection), default=())
    raw: Mapping[str, Any] = _raw()


@dataclasses.dataclass(frozen=True, repr=False)
class Subscription(_Record):
    """A Plex Pass subscription; ``status`` is kept as the server's string."""

    active: bool | None = _field("active", _bool)
    subscribed_at: str | None = _field("subscribedAt", _str)
    status: str | None = _field("status", _str)
    payment_service: str | None = _field("paymentService", _str)
    plan: str | None = _field("plan", _str)
    features: tuple[str, ...] = _field("features", _strs, default=())
    raw: Mapping[str, Any] = _raw()


@dataclasses.dataclass(frozen=True, repr=False)
class UserProfile(_Record):
    """Playback preferences of an account (modes are the server's integers)."""

    auto_select_audio: bool | None = _field("autoSelectAudio", _bool)
    default_audio_language: str | None = _field("defaultAudioLanguage", _str)
    default_audio_languages: tuple[str, ...] = _field("defaultAudioLanguages", _strs, default=())
    default_audio_accessibility: int | None = _field("defaultAudioAccessibility", _int)
    default_subtitle_language: str | None = _field("defaultSubtitleLanguage", _str)
    default_subtitle_languages: tuple[str, ...] = _field("defaultSubtitleLanguages", _strs, default=())
    auto_select_subtitle: int | None = _field("autoSelectSubtitle", _int)
    default_subtitle_accessibility: int | None = _field("defaultSubtitleAccessibility", _int)
    default_subtitle_forced: int | None = _field("defaultSubtitleForced", _int)
    watched_indicator: int | None = _field("watchedIndicator", _int)
    media_reviews_visibility: int | None = _field("mediaReviewsVisibility", _int)
    media_reviews_languages: tuple[str, ...] = _field("mediaReviewsLanguages", _strs, default=())
    raw: Mapping[str, Any] = _raw()


@dataclasses.dataclass(frozen=True, repr=False)
class Service(_Record):
    """A plex.tv service bound to the account; ``token``/``secret`` are masked."""

    identifier: str | None = _field("identifier", _str)
    endpoint: str | None = _field("endpoint", _str)
    token: str | None = _field("token", _str, secret=True)
    secret: str | None = _field("secret", _str, secret=True)
    status: str | None = _field("status", _str)
    raw: Mapping[str, Any] = _raw()


@dataclasses.dataclass(frozen=True, repr=False)
class UserPlexAccount(_Record):
    """A plex.tv account, as ``GET /user`` and ``POST /users/signin`` answer.

    ``id``, ``uuid``, ``username`` and ``auth_token`` are always set; any
    other field the server omits or sends in an unexpected type is ``None``
    (or empty), and every field sent is still in ``raw``.
    """

    id: int = _field("id", _int, required=True)
    uuid: str = _field("uuid", _nonempty, required=True)
    username: str = _field("username", _str, required=True)
    auth_token: str = _field("authToken", _token, required=True, secret=True)
    title: str | None = _field("title", _str)
    email: str | None = _field("email", _str)
    friendly_name: str | None = _field("friendlyName", _str)
    joined_at: datetime.datetime | None = _field("joinedAt", _time)
    has_password: bool | None = _field("hasPassword", _bool)
    two_factor_enabled: bool | None = _field("twoFactorEnabled", _bool)
    remember_expires_at: datetime.datetime | None = _field("rememberExpiresAt", _time)
    locale: str | None = _field("locale", _str)
    country: str | None = _field("country", _str)
    thumb: str | None = _field("thumb", _str)
    confirmed: bool | None = _field("confirmed", _bool)
    email_only_auth: bool | None = _field("emailOnlyAuth", _bool)
    experimental_features: bool | None = _field("experimentalFeatures", _bool)
    anonymous: bool | None = _field("anonymous", _bool)
    guest: bool | None = _field("guest", _bool)
    home: bool | None = _field("home", _bool)
    home_admin: bool | None = _field("homeAdmin", _bool)
    home_size: int | None = _field("homeSize", _int)
    max_home_size: int | None = _field("maxHomeSize", _int)
    protected: bool | None = _field("protected", _bool)
    restricted: bool | None = _field("restricted", _bool)
    backup_codes_created: bool | None = _field("backupCodesCreated", _bool)
    mailing_list_active: bool | None = _field("mailingListActive", _bool)
    mailing_list_status: str | None = _field("mailingListStatus", _str)
    ads_consent: bool | None = _field("adsConsent", _bool)
    ads_consent_set_at: datetime.datetime | None = _field("adsConsentSetAt", _time)
    ads_consent_reminder_at: datetime.datetime | None = _field("adsConsentReminderAt", _time)
    scrobble_types: str | None = _field("scrobbleTypes", _str)
    subscription_description: str | None = _field("subscriptionDescription", _str)
    attribution_partner: str | None = _field("attributionPartner", _str)
    pin: str | None = _field("pin", _str, secret=True)
    subscription: Subscription | None = _field("subscription", _one(Subscription))
    subscriptions: tuple[Subscription, ...] = _field("subscriptions", _many(Subscription), default=())
    profile: UserProfile | None = _field("profile", _one(UserProfile))
    services: tuple[Service, ...] = _field("services", _many(Service), default=())
    roles: tuple[str, ...] = _field("roles", _strs, default=())
    entitlements: tuple[str, ...] = _field("entitlements", _strs, default=())
    raw: Mapping[str, Any] = _raw()


@dataclasses.dataclass(frozen=True, repr=False)
class Pin(_Record):
    """A plex.tv PIN: ``code`` is entered at https://plex.tv/link (4
    characters), or is the long code of an auth URL when the PIN is strong.

    ``auth_token`` is None until the user approves the PIN, then the new
    token (masked in the repr).  A PIN only works with the client identifier
    that created it, until ``expires_at``.
    """

    id: int = _field("id", _int, required=True)
    code: str = _field("code", _nonempty, required=True)
    client_identifier: str | None = _field("clientIdentifier", _str)
    expires_at: datetime.datetime | None = _field("expiresAt", _time)
    auth_token: str | None = _field("authToken", _pin_token, secret=True)
    raw: Mapping[str, Any] = _raw()


def _names(value: Any) -> tuple[str, ...]:
    """plex.tv's comma-separated lists, such as a resource's ``provides``."""
    text = value if isinstance(value, str) else ""
    return tuple(name.strip() for name in text.split(",") if name.strip())


@dataclasses.dataclass(frozen=True, repr=False)
class Resource(_Record):
    """A server or client the account can use, as plex.tv's resources list
    gives it, with the server's own ``access_token`` (masked in repr) and the
    connections that may reach it.  ``owner_id`` is None when the caller owns it."""

    client_identifier: str = _field("clientIdentifier", _nonempty, required=True)
    name: str | None = _field("name", _str)
    product: str | None = _field("product", _str)
    product_version: str | None = _field("productVersion", _str)
    platform: str | None = _field("platform", _str)
    platform_version: str | None = _field("platformVersion", _str)
    device: str | None = _field("device", _str)
    created_at: datetime.datetime | None = _field("createdAt", _time)
    last_seen_at: datetime.datetime | None = _field("lastSeenAt", _time)
    provides: tuple[str, ...] = _field("provides", _names, default=())
    owner_id: int | None = _field("ownerId", _int)
    source_title: str | None = _field("sourceTitle", _str)
    public_address: str | None = _field("publicAddress", _str)
    access_token: str | None = _field("accessToken", _token, secret=True)
    owned: bool | None = _field("owned", _bool)
    home: bool | None = _field("home", _bool)
    synced: bool | None = _field("synced", _bool)
    relay: bool | None = _field("relay", _bool)
    presence: bool | None = _field("presence", _bool)
    https_required: bool | None = _field("httpsRequired", _bool)
    public_address_matches: bool | None = _field("publicAddressMatches", _bool)
    dns_rebinding_protection: bool | None = _field("dnsRebindingProtection", _bool)
    nat_loopback_supported: bool | None = _field("natLoopbackSupported", _bool)
    # plex.tv's legacy XML (<Device><Connection/></Device>) names them as a server's own list does.
    connections: tuple[Connection, ...] = _field("connections", _many(Connection), default=(), alias="Connection")
    raw: Mapping[str, Any] = _raw()


@dataclasses.dataclass(frozen=True, repr=False)
class HomeUser(_Record):
    """A member of the account's Plex Home.  A ``protected`` one needs the
    Home PIN to be switched to (``switch_home_user``)."""

    id: int = _field("id", _int, required=True)
    uuid: str = _field("uuid", _nonempty, required=True)
    title: str | None = _field("title", _str)
    username: str | None = _field("username", _str)
    email: str | None = _field("email", _str)
    friendly_name: str | None = _field("friendlyName", _str)
    thumb: str | None = _field("thumb", _str)
    admin: bool | None = _field("admin", _bool)
    guest: bool | None = _field("guest", _bool)
    restricted: bool | None = _field("restricted", _bool)
    protected: bool | None = _field("protected", _bool)
    raw: Mapping[str, Any] = _raw()


def _b64url(data: bytes) -> str:
    """base64url without padding, as JOSE (JWT, JWK) writes bytes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: Any, what: str) -> bytes:
    """The bytes of base64url text without padding; ``_Invalid`` naming ``what`` otherwise."""
    # Only the base64url alphabet: urlsafe_b64decode would drop other characters silently.
    if not isinstance(text, str) or not re.fullmatch("[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        raise _Invalid(f"{what} is not base64url text")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url(data) != text:  # bits past the last byte set: one value would have several spellings
        raise _Invalid(f"{what} is not canonical base64url")
    return data


def _thumbprint(x: str) -> str:
    """The RFC 7638 SHA-256 thumbprint of the Ed25519 public key ``x``: its
    required members in lexicographic order, without white space."""
    canonical = json.dumps({"crv": "Ed25519", "kty": "OKP", "x": x}, separators=(",", ":"), sort_keys=True)
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


#: What JWT sign-in is given by default: the claims plex.tv puts in its JWT.
JWT_SCOPE = "username,email,friendly_name,restricted,anonymous,joinedAt"


@dataclasses.dataclass(frozen=True, repr=False)
class DeviceKey(_Record):
    """A device's Ed25519 key for JWT sign-in: ``kid`` is the RFC 7638
    thumbprint of ``public_jwk``, the public part plex.tv is given; ``d`` is
    the private key (base64url, as a JWK holds it), masked in repr and never
    sent.  Make one with ``generate_device_key``, keep it with
    ``save_device_key``.  A wrong value is a ``ValueError`` (never showing ``d``).

    Example::

        key = generate_device_key()
        print(key.kid, key.public_jwk["x"])
    """

    kid: str
    public_jwk: Mapping[str, str] = dataclasses.field(hash=False)
    d: str = dataclasses.field(compare=False, metadata={"secret": True})

    def __post_init__(self) -> None:
        jwk = self.public_jwk
        if not isinstance(jwk, Mapping) or (jwk.get("kty"), jwk.get("crv")) != ("OKP", "Ed25519"):
            raise ValueError("DeviceKey.public_jwk must be an Ed25519 JWK (kty 'OKP', crv 'Ed25519')")
        x: Any = jwk.get("x")
        for name, value in (("public_jwk['x']", x), ("d", self.d)):
            try:
                size = len(_unb64url(value, name))
            except _Invalid:
                size = 0
            if size != 32:  # the value is not shown: it may be the private key
                raise ValueError(f"DeviceKey.{name} must be a 32-byte Ed25519 key in base64url")
        if self.kid != _thumbprint(x) or jwk.get("kid", self.kid) != self.kid:
            raise ValueError(f"DeviceKey.kid must be the RFC 7638 thumbprint of the key, {_thumbprint(x)!r}")


@dataclasses.dataclass(frozen=True, repr=False)
class PlexJWT(_Record):
    """A plex.tv JWT and what its claims say: ``token`` (masked in repr) goes
    in ``Config.token``; it expires at ``expires_at`` (7 days after
    ``issued_at``), and ``thumbprint`` names the device key it was issued to.
    ``user`` is the ``user`` claim, ``claims`` all of them, ``raw`` the
    decoded header and claims.  Decoding checks nothing: ``verify_jwt`` does.
    """

    token: str = dataclasses.field(metadata={"secret": True})
    issued_at: datetime.datetime | None
    expires_at: datetime.datetime
    thumbprint: str | None
    user: Mapping[str, Any] = dataclasses.field(compare=False)
    claims: Mapping[str, Any] = dataclasses.field(compare=False)
    raw: Mapping[str, Any] = _raw()


def _jwt_part(text: str, what: str) -> dict[str, Any]:
    data = _unb64url(text, f"the JWT's {what}")
    try:
        decoded = data.decode("utf-8")
        doc = _parse_text(decoded) if data.lstrip()[:1] == b"{" else None
    except UnicodeDecodeError:
        doc = None
    if not isinstance(doc, dict):
        raise _Invalid(f"the JWT's {what} is not a JSON object")
    # Parsed again (it is small, and its size checked): a key given twice would
    # mean one thing to plexauth and maybe another to whoever reads it next.
    json.loads(decoded, object_pairs_hook=functools.partial(_unique_keys, what))
    return doc


def _unique_keys(what: str, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise _Invalid(f"the JWT's {what} gives a key twice")
    return found


def _decoded_jwt(token: Any) -> PlexJWT:
    """``token`` decoded (not verified) into a PlexJWT; ``_Invalid`` saying why it cannot be."""
    if _token(token) is None or token.count(".") != 2:
        raise _Invalid("the token is not a JWT (three base64url parts joined by dots)")
    head, body, _signature = token.split(".")
    header, claims = _jwt_part(head, "header"), _jwt_part(body, "claims")
    expires = _time(_int(claims.get("exp")))
    if expires is None:
        raise _Invalid("the JWT has no expiry ('exp')")
    user = claims.get("user")
    decoded = PlexJWT(token, _time(_int(claims.get("iat"))), expires, _str(claims.get("thumbprint")),
                      user if isinstance(user, dict) else {}, claims, {"header": header, "claims": claims})
    decoded.__dict__["_secrets"] = _local.secrets  # what the request sent, which the claims may echo
    return decoded


# =============================================================================
# Errors
# =============================================================================


def _restore(cls: type, args: tuple[Any, ...], state: dict[str, Any]) -> BaseException:
    exc: BaseException = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class PlexAuthError(Exception):
    """Base of every error plexauth raises: catch it to catch them all."""

    def __init__(self, message: str, *, method: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.method = method
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore, (type(self), self.args, self.__dict__))


class APIError(PlexAuthError):
    """The server answered with a non-2xx status; retry only if it says so."""

    def __init__(
        self,
        status: int,
        code: int | None = None,
        message: str | None = None,
        *,
        method: str = "GET",
        path: str = "/",
        errors: tuple[Mapping[str, Any], ...] = (),
        body: bytes = b"",
    ) -> None:
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.body = body
        super().__init__(self._sentence(method, path), method=method, path=path)

    def _sentence(self, method: str, path: str) -> str:
        try:
            reason = f"{self.status} {http.HTTPStatus(self.status).phrase}"
        except ValueError:
            reason = str(self.status)
        text = f"{method} {path} failed with {reason}"
        if self.message:
            text += f": {self.message}"
        if self.code is not None:
            text += f" (code {self.code})"
        return text


class BadRequestError(APIError):
    """400: the request was malformed; retrying the same request will not help."""


class UnauthorizedError(APIError):
    """401 (or a Plex Media Server's 403): the token or credentials are not accepted; do not retry."""


class TwoFactorRequiredError(UnauthorizedError):
    """plex.tv code 1029: sign in again with the (correct) verification code."""


class RateLimitedError(APIError):
    """429 (plex.tv code 1003): safe to retry after ``retry_after`` seconds (None if unknown)."""

    def __init__(self, status: int, code: int | None = None, message: str | None = None, *,
                 retry_after: float | None = None, **kwargs: Any) -> None:
        self.retry_after = retry_after
        super().__init__(status, code, message, **kwargs)

    def _sentence(self, method: str, path: str) -> str:
        text = super()._sentence(method, path)
        if self.retry_after is not None:
            text += f"; retry after {self.retry_after:g} s"
        return text


class HomePinRequiredError(UnauthorizedError):
    """plex.tv code 1041 (403): the Home user is protected, and the Home PIN was missing or wrong."""


class PinExpiredError(PlexAuthError):
    """The PIN is gone: plex.tv no longer knows it (404), it passed its
    ``expires_at``, or the wait for approval timed out.  Create a new one."""


class ResponseError(PlexAuthError):
    """A 2xx answer whose body could not be decoded into the model; retrying rarely helps."""

    def __init__(self, reason: str, *, status: int, method: str, path: str, sentence: str | None = None) -> None:
        self.status = status
        self.reason = reason
        # sentence: what verify_jwt says of a token refused, whose answer (plex.tv's keys) was fine.
        super().__init__(sentence or f"{method} {path} answered {status} with a body that could not be used: {reason}",
                         method=method, path=path)


class TransportError(PlexAuthError):
    """The server could not be reached or the connection broke (refused, reset,
    timeout, TLS failure); a retry later may work, but a sign-in may have reached
    plex.tv if the connection broke after sending."""

    def __init__(self, reason: str, *, method: str, path: str) -> None:
        self.reason = reason
        super().__init__(f"{method} {path} could not complete: {reason}", method=method, path=path)


class ServerUnreachableError(TransportError):
    """``connect`` found no connection that proved to be the server: ``attempts``
    holds ``(uri, reason)`` for each candidate, most preferred first."""

    def __init__(self, reason: str, *, method: str, path: str, attempts: tuple[tuple[str, str], ...] = ()) -> None:
        self.attempts = attempts
        super().__init__(reason, method=method, path=path)


# =============================================================================
# The request core: build, send, classify, decode
# =============================================================================
# Every operation is one _call (or one _send, when the status is the whole
# answer): _send builds the request and tries it (retries), _fetch follows
# redirects, _exchange makes one HTTP exchange and reads its whole answer,
# and _call decodes the body.  Everything a server sends is bounded here: the
# time of the whole call, the size of the body, what a body may hold, and
# what of it reaches an exception.

#: An answer body larger than this, after decompression, is refused
#: (``ResponseError``).  The Plex answers plexauth reads are 1 to 50 KB; a
#: list of several hundred servers stays under 1 MiB.
MAX_BODY_BYTES = 2 * 1024 * 1024
#: Backoff before the first retry of a GET; it doubles for each later one.
_BACKOFF_SECONDS = 0.5
#: Longest wait between two tries.  A ``Retry-After`` above it is not waited
#: for: the error is raised at once with ``retry_after`` set, because sleeping
#: for an hour inside a cron job helps nobody.
MAX_RETRY_WAIT_SECONDS = 30.0
_MAX_REDIRECTS = 5
_REDIRECT_STATUSES = frozenset((301, 302, 303, 307, 308))
_RETRY_STATUSES = frozenset((429, 502, 503, 504))
# Retries and redirects are ours (_send, _fetch): urllib3 does neither.
_NO_RETRIES = urllib3.util.Retry(total=False, redirect=False)
#: An error's ``.body`` keeps this much (plex.tv's error bodies are under
#: 1 KB, a server's HTML error page a few KB).  Twice as much is read, so that
#: a secret the server echoed across the cut is whole, and masked, before it;
#: a body longer than that is not kept at all (a secret across the end of the
#: read could not be masked).  Masking costs CPU time after the last byte, so
#: it is kept small.
_KEPT_ERROR_BODY = 16 * 1024
_READ_ERROR_BODY = 2 * _KEPT_ERROR_BODY
# A final answer may follow a few interim ones (103 Early Hints, 100 Continue).
_MAX_INTERIM_ANSWERS = 8

_CODE_TWO_FACTOR = 1029
_CODE_HOME_PIN = 1041
_CODE_RATE_LIMITED = 1003
_CODE_NO_DEVICE_KEY = 1097  # clients.plex.tv: no key is registered for this device (it was removed)
_STATUS_JWT_EXPIRED = 498  # clients.plex.tv: the JWT expired

_pools: dict[bool | str, urllib3.PoolManager] = {}


class _CallState(threading.local):
    """What this thread's call is doing, for code that urllib3 or a decoder
    runs deep inside it: its deadline (for every read, the TLS handshake, and
    masking what the server sent: past it, what is left to mask is withheld),
    none outside a call; and the secrets a server may echo."""

    deadline = math.inf
    secrets: tuple[str, ...] = ()
    # Inside a model's repr: the secrets of the models in it, for the outermost to mask.
    repr_secrets: set[str] | None = None
    # While an output is masked: the steps its masking may still take (_masking); else -1.
    mask_steps = -1

    def __init__(self) -> None:
        # The request's secrets and those of every model made of its answer so
        # far: one list, which each of those models keeps for its repr to mask.
        # A fresh one for each answer (outside a decode, a spare).
        self.answer_secrets: list[str] = []


class _OutOfTime(Exception):
    """Masking ran past the call's deadline: what it was masking is withheld."""


# Texts this short are masked in well under a millisecond, deadline or not
# (a reason, a message): only longer ones are withheld past it.
_QUICK_TO_MASK = 4096


_local = _CallState()


class _MaskedRecords(logging.Filter):
    """urllib3 logs each request's URL with its query, where one secret must
    travel (the Home PIN, as plex.tv asks): its records are masked with the
    secrets of the call this thread is making.  Records are made only when
    DEBUG logging is on, so this costs nothing otherwise."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _local.secrets:
            record.msg, record.args = _shown(record.getMessage(), _local.secrets, keys=False), ()
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_MaskedRecords())


class _Unusable(http.client.HTTPException):
    """An answer plexauth does not use; its text is plexauth's, never the server's."""


def _seconds_left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise socket.timeout("the call's time limit passed")
    return left


class _DeadlineReader(io.RawIOBase):
    """A socket's bytes, each read ending by the call's deadline: a socket
    timeout bounds one read, and a server trickling a byte at a time would
    otherwise hold a call for as long as it likes."""

    def __init__(self, raw: io.RawIOBase, sock: socket.socket, deadline: float) -> None:
        self._raw = raw  # the socket's file, which keeps the socket open while read
        self._sock = sock
        self._deadline = deadline
        timeout = sock.gettimeout()
        self._timeout = math.inf if timeout is None else timeout

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        left = _seconds_left(self._deadline)
        if left < self._timeout:  # else the socket's own timeout (urllib3's) ends the read in time
            self._timeout = left
            self._sock.settimeout(left)
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


_MAX_CHUNK_LINE = 65536  # as http.client's
_CHUNK_SIZE = rb"[0-9a-fA-F]{1,16}"  # compiled on first use: most answers are not chunked


class _Response(http.client.HTTPResponse):
    """http.client's answer, made safe for a shared pool of connections.

    http.client takes an interim answer (``103 Early Hints``, ``102``) for the
    final one and leaves the real answer in the socket, where the next
    request, perhaps another user's, would read it: here interim answers are
    skipped, as RFC 9110 asks of a client.  Every read ends by the call's
    deadline; headers that cannot be parsed make the answer unusable (urllib3
    would log them, and they may hold what the server echoed); a body that the
    status forbids (204, 304) closes the connection instead of being left for
    the next answer.
    """

    def __init__(self, sock: socket.socket, *args: Any, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self._socket = sock
        # The socket's file that http.client made, read through a reader that keeps to the deadline.
        self.fp = io.BufferedReader(_DeadlineReader(self.fp.detach(), sock, _local.deadline))

    def _read_status(self) -> tuple[str, int, str]:
        for _ in range(_MAX_INTERIM_ANSWERS + 1):
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim answer's; the final one follows
        raise _Unusable(f"more than {_MAX_INTERIM_ANSWERS} interim (1xx) answers")

    def _read_next_chunk_size(self) -> int:
        # http.client's int(line, 16) also takes "-1" (which it then reads as
        # "to the end of the stream", unbounded), "+1", "1_0" and blanks.
        line = self.fp.readline(_MAX_CHUNK_LINE + 1)
        size = line.split(b";", 1)[0].strip()
        if len(line) > _MAX_CHUNK_LINE or not re.fullmatch(_CHUNK_SIZE, size):
            self._close_conn()
            raise ValueError("a chunk size that is not up to 16 hexadecimal digits")  # IncompleteRead to urllib3
        return int(size, 16)

    def begin(self) -> None:
        super().begin()
        try:
            urllib3.util.response.assert_header_parsing(self.msg)
        except urllib3.exceptions.HeaderParsingError:
            raise _Unusable("the answer has header lines that cannot be parsed") from None
        if self.status in (204, 304):
            # They have no body; one sent anyway (announced or not, now or a
            # little later) would be read as the next request's answer.
            self.will_close = True

    def _close_conn(self) -> None:
        # The answer was read to its end.  Bytes beyond it were not asked
        # for: those in our buffer go with it, those in the socket make the
        # pool drop the connection when it is next taken, but those that came
        # in the same TLS record wait inside OpenSSL, where the pool does not
        # look; then the connection is shut, and the pool replaces it.
        if isinstance(self._socket, ssl.SSLSocket) and self._socket.pending():
            with contextlib.suppress(OSError):
                self._socket.shutdown(socket.SHUT_RDWR)
        super()._close_conn()  # type: ignore[misc]


class _HTTPConnection(urllib3.connection.HTTPConnection):
    response_class = _Response


class _HTTPSConnection(urllib3.connection.HTTPSConnection):
    response_class = _Response


class _HTTPConnectionPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSConnectionPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The TLS settings are made here, for the first https pool: loading
        # the system's CA store costs tens of milliseconds a plain-http run
        # need not pay.  Given a context, urllib3 would load ca_certs into it
        # again for each connection: it is loaded once, here.
        kwargs["ssl_context"] = _tls_context(kwargs.pop("ca_certs", None), kwargs.get("cert_reqs"))
        super().__init__(*args, **kwargs)


class _TLSContext(ssl.SSLContext):
    """TLS settings in which OpenSSL checks the server's name during the
    handshake.  urllib3 1.26 checks names itself, and when one does not match
    it logs the certificate, which a server may fill with what it was sent;
    for an IP address it does not even pass the name on, so it is taken from
    the socket's peer here.  The handshake gets what is left of the call's
    time, not a new connect timeout after the connect has taken its own."""

    def wrap_socket(self, sock: socket.socket, server_side: bool = False, do_handshake_on_connect: bool = True,
                    suppress_ragged_eofs: bool = True, server_hostname: str | bytes | None = None,
                    session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
        left = _seconds_left(_local.deadline)
        timeout = sock.gettimeout()
        sock.settimeout(left if timeout is None else min(timeout, left))
        return super().wrap_socket(sock, server_side, do_handshake_on_connect, suppress_ragged_eofs,
                                   server_hostname or sock.getpeername()[0], session)


@functools.lru_cache(maxsize=None)
def _tls_context(ca_certs: str | None, cert_reqs: str | None) -> ssl.SSLContext:
    context = _TLSContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and checks names
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_reqs == "CERT_NONE":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif ca_certs is None:
        context.load_default_certs()
    else:
        context.load_verify_locations(cafile=ca_certs)
    return context


def _pool(verify: bool | str) -> urllib3.PoolManager:
    """The module's pool for this TLS setting, made on first use.  Two threads
    may make one at once; setdefault keeps the first, the other is dropped."""
    pool = _pools.get(verify)
    if pool is None:
        tls: dict[str, Any] = {"cert_reqs": "CERT_REQUIRED" if verify else "CERT_NONE"}
        if isinstance(verify, str):
            tls["ca_certs"] = verify
        made = urllib3.PoolManager(num_pools=16, maxsize=8, **tls)
        made.pool_classes_by_scheme = {"http": _HTTPConnectionPool, "https": _HTTPSConnectionPool}
        pool = _pools.setdefault(verify, made)
    return pool


def _header_text(value: str) -> str:
    # http.client sends str headers as Latin-1; carry UTF-8 bytes through it.
    return value.encode("utf-8").decode("latin-1")


class _Prepared:
    """What every request made with one Config shares, worked out once."""

    __slots__ = ("clients", "plex_tv", "server", "timeout", "token_headers", "tokenless_headers")

    def __init__(self, config: Config) -> None:
        plain = {"Accept": "application/json", "User-Agent": f"plexauth/{__version__}"}
        for name, header in _PLEX_HEADERS:
            value = getattr(config, name)
            if value is not None:
                plain[header] = _header_text(value)
        with_token = dict(plain)
        if config.token is not None:
            with_token[_TOKEN_HEADER] = _header_text(config.token)
        # Never changed, only copied.
        self.tokenless_headers = plain
        self.token_headers = with_token
        # Each origin as (its URL without the trailing slash, its path for messages).
        self.plex_tv = _origin_of(config.plex_tv_url)
        self.server = _origin_of(config.server_url)
        self.clients = _origin_of(config.clients_url)
        self.timeout = urllib3.Timeout(connect=config.timeout, read=config.timeout)


def _origin_of(base: str) -> tuple[str, str]:
    return base.rstrip("/"), (urllib3.util.parse_url(base).path or "").rstrip("/")


def _prepared(config: Config) -> _Prepared:
    if not isinstance(config, Config):
        raise TypeError(f"config must be a plexauth.Config, not {type(config).__name__}")
    # Kept in the instance's __dict__, as functools.cached_property does on
    # frozen dataclasses; dataclasses.replace() gives a Config without it.
    prepared: _Prepared | None = config.__dict__.get("_prepared")
    if prepared is None:
        prepared = config.__dict__["_prepared"] = _Prepared(config)
    return prepared


class _Request:
    """One operation's request, as it goes through the core."""

    __slots__ = ("body", "config", "deadline", "headers", "method", "on_server", "path", "redirects", "secrets",
                 "timeout", "url")

    def __init__(self, config: Config, method: str, url: str, path: str, headers: dict[str, str],
                 body: bytes | None, on_server: bool, secrets: tuple[str, ...], deadline: float,
                 redirects: bool = True) -> None:
        self.config = config
        self.method = method
        self.url = url
        self.path = path  # the URL's path, for messages: never the query
        self.headers = headers
        self.body = body
        self.on_server = on_server
        self.secrets = secrets  # what the server may echo, to be masked in all it sends back
        self.deadline = deadline  # time.monotonic() by which the whole call ends
        self.redirects = redirects  # a GET follows them, unless its answer must come from its own address
        self.timeout = _prepared(config).timeout

    def failed(self, reason: str) -> TransportError:
        return TransportError(_shown(reason, self.secrets), method=self.method, path=self.path)


class _Answer:
    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def _describe(exc: BaseException, url: str, seconds: float) -> str:
    """What went wrong, in plain words, and where: the scheme, host and port
    of ``url`` (never its path, query or credentials).  Never the server's
    words, which http.client puts in some of its exceptions: only the kind
    of exception and the innermost OS error (refused, reset, not trusted)."""
    where = _where(url)
    seen = set()
    error: OSError | None = None
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, _Unusable):
            return f"{current} (from {where})"
        if isinstance(current, OSError) and not isinstance(current, urllib3.exceptions.HTTPError):
            error = current
        reason = getattr(current, "reason", None)
        nested = [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        current = (
            reason if isinstance(reason, BaseException)
            else nested[0] if nested
            else current.__cause__ or current.__context__
        )
    detail = (error.strerror or str(error) or type(error).__name__) if error else type(exc).__name__
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"the TLS certificate of {where} is not trusted ({error.verify_message or detail})"
    # NewConnectionError subclasses ConnectTimeoutError, so it goes first.
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        if isinstance(error, socket.gaierror):
            return f"the host name of {where} was not found ({detail})"
        if isinstance(error, ConnectionRefusedError):
            return f"{where} refused the connection"
        return f"could not connect to {where} ({detail})"
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return f"connecting to {where} timed out after {seconds:g} s"
    if isinstance(exc, (urllib3.exceptions.TimeoutError, TimeoutError)):
        return f"{where} sent nothing for {seconds:g} s (timed out)"
    if isinstance(exc, (urllib3.exceptions.SSLError, ssl.SSLError)):  # ssl's own: a CA bundle that cannot be loaded
        return f"TLS with {where} failed ({detail})"
    if isinstance(exc, urllib3.exceptions.ProtocolError):
        return f"the connection to {where} broke ({detail})"
    return f"the connection to {where} failed ({detail})"


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib3.util.parse_url(url)
    default = 443 if parts.scheme == "https" else 80
    return (parts.scheme or "", (parts.host or "").lower(), parts.port or default)


def _where(url: str) -> str:
    """``scheme://host:port`` of ``url``, for messages: no credentials, path or query."""
    scheme, host, port = _origin(url)
    return f"{scheme}://{host}:{port}"  # an IPv6 host keeps its brackets


def _exchange(request: _Request, url: str, headers: dict[str, str]) -> _Answer:
    """One HTTP exchange and its whole answer; no retries, no redirects.

    The connection goes back to the pool only when its answer was read to
    the end; a TransportError carries no exception of urllib3's or the
    socket's (they may quote what the server sent).
    """
    started = time.monotonic()
    reason = None
    seconds = request.config.timeout
    try:
        left = _seconds_left(request.deadline)
        timeout = request.timeout if left >= seconds else urllib3.Timeout(connect=left, read=left)
        response = _pool(request.config.verify).urlopen(
            request.method,
            url,
            body=request.body,
            headers=headers,
            retries=_NO_RETRIES,
            redirect=False,
            timeout=timeout,
            preload_content=False,
            decode_content=False,
            enforce_content_length=True,  # urllib3 1.26 would take a cut body for a whole one
        )
        whole = False
        try:
            if response.status < 200:
                raise _Unusable(f"the server switched protocols ({response.status})")
            body = _read_body(response, request)
            whole = True
        finally:
            if not whole:
                response.close()  # half read: never back to the pool
            response.release_conn()
    except (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError) as exc:
        reason = _describe(exc, url, seconds)
    elapsed = time.monotonic() - started
    if reason is None:
        _log.debug("%s %s -> %d (%.3f s)", request.method, request.path, response.status, elapsed)
        return _Answer(response.status, response.headers, body)
    if time.monotonic() >= request.deadline:
        total = request.config.total_timeout
        reason = f"no complete answer from {_where(url)} within the {total:g} s limit for the whole call"
    _log.debug("%s %s failed after %.3f s", request.method, request.path, elapsed)
    raise request.failed(reason)


def _read_body(response: Any, request: _Request) -> bytes:
    """The body, decompressed: up to MAX_BODY_BYTES for a 2xx answer, and the
    start of anything else (an error's body; b"" if it cannot be decoded)."""
    success = 200 <= response.status < 300
    limit = MAX_BODY_BYTES if success else _READ_ERROR_BODY
    chunks: list[bytes] = []
    size = 0
    while response.length_remaining != 0:  # None: until the end of a chunked (or unframed) body
        chunk = response.read(min(response.length_remaining or 65536, limit + 1 - size), decode_content=False)
        if not chunk:
            break
        size += len(chunk)
        chunks.append(chunk)
        if size > limit:
            response.close()  # the rest is not wanted
            if success:
                raise _response_error(request, response.status, f"the body is larger than {MAX_BODY_BYTES} bytes")
            break
    body = b"".join(chunks)
    encoding = response.headers.get("Content-Encoding", "").strip().lower()
    if encoding in ("", "identity"):
        return body if success else body[:limit]
    decoded = _decompress(body, encoding, limit)
    if isinstance(decoded, bytes):
        return decoded
    if success:
        raise _response_error(request, response.status, decoded)
    return b""


def _response_error(request: _Request, status: int, reason: str) -> ResponseError:
    return ResponseError(reason, status=status, method=request.method, path=request.path)


#: gzip lets a body be several members in a row; a few are plenty.
_MAX_GZIP_MEMBERS = 8


def _decompress(body: bytes, encoding: str, limit: int) -> bytes | str:
    """``body`` undone from one gzip or deflate layer, or why it cannot be.

    The output is bounded as it is made (a few KB of gzip can hold gigabytes),
    encodings that were not asked for (stacked, or unknown) are refused, and
    so are gzip bodies of many members (each costs a copy of the rest).
    """
    wbits: tuple[int, ...]
    if encoding in ("gzip", "x-gzip"):
        wbits = (16 + zlib.MAX_WBITS,)
    elif encoding == "deflate":
        wbits = (zlib.MAX_WBITS, -zlib.MAX_WBITS)  # zlib-wrapped, as the RFC says, or raw, as some servers send
    else:
        return "the body is in a Content-Encoding plexauth does not read (only one gzip or deflate layer)"
    for bits in wbits:
        out: list[bytes] = []
        size = members = 0
        data = body
        decompressor = zlib.decompressobj(bits)
        try:
            while data:
                piece = decompressor.decompress(data, limit + 1 - size)
                size += len(piece)
                out.append(piece)
                if size > limit:
                    return f"the body is larger than {limit} bytes once decompressed"
                data = decompressor.unconsumed_tail
                if decompressor.eof and decompressor.unused_data:
                    members += 1
                    if encoding == "deflate" or members >= _MAX_GZIP_MEMBERS:  # deflate is one stream
                        return "the body does not match its Content-Encoding"
                    data = decompressor.unused_data
                    decompressor = zlib.decompressobj(bits)
        except zlib.error:
            continue
        if decompressor.eof:
            return b"".join(out)
    return "the body does not match its Content-Encoding"


def _fetch(request: _Request) -> _Answer:
    """One try, following redirects for GETs; the token never leaves its
    origin, and no redirect is followed to an address holding a secret."""
    url, headers = request.url, request.headers
    answer = _exchange(request, url, headers)
    for _ in range(_MAX_REDIRECTS):
        if answer.status not in _REDIRECT_STATUSES or request.method != "GET" or not request.redirects:
            break
        target = _redirect_target(request, url, answer.headers.get("Location"))
        if target is None:
            break
        if _TOKEN_HEADER in headers and _origin(target) != _origin(request.url):
            _log.debug("%s %s: redirected to another origin; X-Plex-Token not forwarded", request.method, request.path)
            headers = {k: v for k, v in headers.items() if k != _TOKEN_HEADER}
        url = target
        answer = _exchange(request, url, headers)
    return answer


def _redirect_target(request: _Request, url: str, location: str | None) -> str | None:
    if not location:
        return None
    if _shown(location, request.secrets) != location:
        # urllib3 would log the address, and the token would sit in a URL.
        _log.debug("%s %s: not redirected to an address that holds a secret", request.method, request.path)
        return None
    try:
        target = urllib.parse.urljoin(url, location)
        if urllib3.util.parse_url(target).scheme not in ("http", "https"):
            return None
    except ValueError:  # includes urllib3's LocationParseError
        return None
    return target


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("Retry-After")
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    import email.utils  # noqa: PLC0415 (only a dated Retry-After needs it)

    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.timezone.utc)
        return max(0.0, (when - datetime.datetime.now(datetime.timezone.utc)).total_seconds())
    except (TypeError, ValueError, IndexError, OverflowError):  # a date no calendar has
        return None


# -----------------------------------------------------------------------------
# Masking what a server sends back
# -----------------------------------------------------------------------------
# A server may echo a secret of the request (the token, the password, the
# code) in an error body, a header or a reason, raw or escaped in any of the
# ways below, or several of them stacked.  _mask finds it in the text and in
# views of it with one more level of escapes undone each (up to four: a
# percent-encoded secret in a JSON string in an XML attribute is three), and
# blanks the text it came from.  What _mask cannot place (a secret split by
# markup, spread by NULs or line breaks, in text decoded with the wrong
# charset) _reveals still finds: shown text that does is withheld whole.

_UNESCAPE_PASSES = 4
# Patterns used only on what is shown are kept as text: re compiles them on
# first use (and caches them), which a run with no error never pays for.
_ESCAPES = (
    r"\\u([dD][89abAB][0-9a-fA-F]{2})\\u([dD][c-fC-F][0-9a-fA-F]{2})"  # JSON, a surrogate pair
    r"|\\u([0-9a-fA-F]{4})|\\([\"\\/bfnrt])"  # JSON
    r"|&#0*([0-9]{1,7});?|&#[xX]0*([0-9a-fA-F]{1,6});?|&([A-Za-z][A-Za-z0-9]{1,31};?)"  # XML and HTML
    # A run of percent or \x escapes is decoded whole: a character's UTF-8 bytes may span any number of them.
    r"|((?:%[0-9a-fA-F]{2})+)|((?:\\x[0-9a-fA-F]{2})+)|(\+)"  # percent-encoding, + for a space; \xNN
)
#: What every escape of _ESCAPES starts with: a text holding none has none to undo.
_ESCAPE_STARTS = ("\\", "&", "%", "+")
_JSON_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
# Values under keys ending in these names (authToken, accessToken, token,
# secret, password...) are secrets wherever a server puts them, even in an
# error body; an unterminated value (a cut body) is masked to its end.
_SECRET_KEY = r"(?:[Tt]oken|TOKEN|[Ss]ecret|[Pp]assword|verificationCode|[Pp]in|PIN)"  # noqa: S105 (names)
_SECRET_KEYS = (  # where a value starts; it ends at its closing quote, or a separator
    r'"[^"\\]{0,64}?' + _SECRET_KEY + r'"\s*:\s*"',  # JSON
    r"(?<![\w.:-])[\w.:-]{0,64}?" + _SECRET_KEY + r"\s*=\s*[\"']",  # XML
    r"(?<![\w.:-])[\w.:-]{0,64}?" + _SECRET_KEY + r"=(?=[^\s&\"'<>;,])",  # a query string
)
_QUERY_VALUE_END = r"[\s&\"'<>;,]"
# A literal stretch shorter than this, between escapes, joins them in one
# span: a view of a text full of escapes then keeps few spans, at the cost of
# masking a little more around a secret found there.
_SHORT_STRETCH = 32


class _View:
    """A text with one more level of escapes undone than ``parent``'s, and
    for each of its stretches the span of ``parent``'s text it came from: in
    a literal stretch characters map one to one, else each to the whole span.
    (Kept in arrays: a text full of escapes has many stretches.)"""

    def __init__(self, text: str, parent: _View | None = None) -> None:
        self.text = text
        self.parent = parent
        self.starts = array.array("q")  # where each stretch starts here
        self.sources = array.array("q")  # where it starts in the parent's text
        self.ends = array.array("q")  # where it ends there
        self.literal = bytearray()

    def source(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that [start, end) of this view came from."""
        if self.parent is None:
            return start, end
        first = bisect.bisect_right(self.starts, start) - 1
        last = bisect.bisect_right(self.starts, end - 1) - 1
        begin = self.sources[first] + (start - self.starts[first] if self.literal[first] else 0)
        finish = self.sources[last] + (end - self.starts[last]) if self.literal[last] else self.ends[last]
        return self.parent.source(begin, finish)

    def moved(self, start: int, end: int) -> bool:
        """Whether [start, end) came from text of another length (it held escapes)."""
        source_start, source_end = self.source(start, end)
        return source_end - source_start != end - start

    def _stretch(self, here: int, start: int, end: int, literal: bool, join: bool = True) -> None:
        # Escapes in a row share a span, and so does a short literal stretch
        # between two escapes: fewer stretches, a little more masked around a find.
        if join and self.literal and not self.literal[-1] and (not literal or end - start < _SHORT_STRETCH):
            self.ends[-1] = end
        else:
            self.starts.append(here)
            self.sources.append(start)
            self.ends.append(end)
            self.literal.append(literal)

    def unescaped(self) -> _View | None:
        """This text with one level of escapes undone; None when it holds none."""
        text = self.text
        if len(text) > _QUICK_TO_MASK and time.monotonic() > _local.deadline:
            raise _OutOfTime
        if not any(start in text for start in _ESCAPE_STARTS):  # most texts: tokens, names
            return None
        view = _View("", self)
        out = io.StringIO()  # not a list of pieces: a text of many escapes would make millions
        length = position = 0
        for match in re.finditer(_ESCAPES, text):
            value = _unescape(match)
            if value is None:  # stands for nothing: it stays, as text
                continue
            begin, finish = match.span()
            if begin > position:
                view._stretch(length, position, begin, True)
                out.write(text[position:begin])
                length += begin - position
            view._stretch(length, begin, finish, False)
            out.write(value)
            length += len(value)
            position = finish
        if not view.literal:
            return None
        if position < len(text):  # the rest, after the last escape, stays apart
            view._stretch(length, position, len(text), True, join=False)
            out.write(text[position:])
        view.text = out.getvalue()
        return view


def _unescape(match: re.Match[str]) -> str | None:
    """What one escape stands for; None for one that stands for nothing."""
    high, low, code, simple, decimal, hexadecimal, name, percent, hex_bytes, plus = match.groups()
    if high:
        return chr(0x10000 + ((int(high, 16) - 0xD800) << 10) + int(low, 16) - 0xDC00)
    if code or decimal or hexadecimal:
        number = int(code, 16) if code else int(decimal) if decimal else int(hexadecimal, 16)
        return chr(number) if number <= 0x10FFFF else None
    if simple:
        return _JSON_ESCAPES[simple]
    if name:
        import html.entities  # noqa: PLC0415 (only an escaped text needs it)

        # HTML reads the longest known name, even without its ";".
        for end in range(len(name), 1, -1):
            if name[:end] in html.entities.html5:
                return html.entities.html5[name[:end]] + name[end:]
        return None
    if percent or hex_bytes:
        data = bytes.fromhex((percent or hex_bytes).replace("%", "").replace("\\x", ""))
        return data.decode("utf-8", _AS_WINDOWS_1252)
    return " " if plus else None


def _windows_1252(error: UnicodeError) -> tuple[str, int]:
    """Bytes that are not UTF-8 read as Windows-1252, one character each:
    text percent-encoded from Latin-1 (PHP's urlencode of Latin-1 text, old
    Java), whose bytes 0x80-0x9f browsers and Windows read as Windows-1252
    (the five it leaves undefined as Latin-1, as WHATWG's decoder does)."""
    undecoded = cast(UnicodeDecodeError, error)  # (registered for decoding only)
    data = undecoded.object[undecoded.start:undecoded.end]
    # (cp1252's own errors, the undefined bytes, come back here: read as Latin-1.)
    text = data.decode("cp1252", _AS_WINDOWS_1252) if undecoded.encoding == "utf-8" else data.decode("latin-1")
    return text, undecoded.end


_AS_WINDOWS_1252 = "plexauth.windows-1252"
codecs.register_error(_AS_WINDOWS_1252, _windows_1252)


def _views(text: str) -> list[_View]:
    views = [_View(text)]
    for _ in range(_UNESCAPE_PASSES):
        view = views[-1].unescaped()
        if view is None:
            break
        views.append(view)
    return views


@functools.lru_cache(maxsize=8)  # as _secret_forms
def _pieces(secrets: tuple[str, ...]) -> tuple[str, ...]:
    """``secrets`` (not the empty ones) and what else gives one away: the
    claims and the signature of a JWT (its header is predictable, so either
    echoed alone rebuilds it, the claims being guessable too), also in the
    standard base64 alphabet."""
    found = [secret for secret in secrets if secret]
    for secret in found[:]:
        parts = secret.split(".")
        if len(parts) == 3 and all(re.fullmatch("[A-Za-z0-9_-]{16,}", part) for part in parts):
            found += (form for part in (secret, *parts[1:]) for form in (part, part.translate(_STANDARD_ALPHABET)))
    # As repr() writes it inside a longer str: with \\, \xa0 or \U000e0041
    # (which no view undoes: the \x of a body means a byte), and with \' too
    # when that str holds both kinds of quote (a model's repr of a title that
    # echoes a password).
    for secret in list(found):
        escaped = repr("\"'" + secret)[4:-1]
        if escaped != secret:
            found += (escaped, escaped.replace("\\'", "'"))
    return tuple(dict.fromkeys(found))


_STANDARD_ALPHABET = str.maketrans("-_", "+/")
#: Charsets of servers in other locales (bytes that are not UTF-8 are read as Windows-1252).
_LEGACY_CHARSETS = ("cp1250", "cp1251", "cp1253", "cp1254", "iso-8859-2", "iso-8859-15", "koi8-r", "mac-roman",
                    "cp437", "cp850", "shift_jis", "gbk", "big5", "euc-kr")
#: Secrets that are not ASCII given _legacy_forms, at most (a request's own
#: come first; a hostile answer of many would make thousands of forms).
_LEGACY_SECRETS = 4


@functools.lru_cache(maxsize=64)  # the same password in the secrets of every answer of a command
def _legacy_forms(secret: str) -> tuple[str, ...]:
    """What else gives ``secret`` (not ASCII) away, as _plain reads it: its
    UTF-8 read in the charset of another locale (mojibake: _misread undoes
    Latin-1's and Windows-1252's), and its bytes in one, read as plexauth
    reads bytes that are not UTF-8.  Looked for by _wanted, not cut out:
    there are dozens, and the patterns _mask would make of them would cost
    tens of milliseconds."""
    forms = [secret.encode("utf-8", "surrogatepass").decode(charset, "replace") for charset in _LEGACY_CHARSETS]
    for charset in _LEGACY_CHARSETS:
        with contextlib.suppress(UnicodeEncodeError):
            data = secret.encode(charset)
            forms += (data.decode("utf-8", _AS_WINDOWS_1252), data.decode("cp1252", _AS_WINDOWS_1252))
    # Not one that reads shorter than the secret (bytes read as what shows nothing: "0" for "0\u00b2"),
    # nor all ASCII ("\u2122" read "TM": "tm1234" for "\u00f4\u00e81234" in Mac Roman).
    shortest = len(_plain(secret))
    return tuple(dict.fromkeys(form for form in map(_plain, forms) if len(form) >= shortest and not form.isascii()))


# Masking is bounded in steps (_Search), not seconds, so that what is shown
# does not depend on the machine: a step takes 2 to 7 ns.  What is left when
# a budget runs out is withheld.  Real answers take far less; a hostile one,
# with megabytes of long names beside hundreds of tokens, or tokens made to
# share long prefixes, would take minutes to hours.
#: One text (a repr, an error, a log line): under a second.
_TEXT_STEPS = 100_000_000
#: A command's result, of many texts: a few seconds (a thousand servers take 0.7 billion).
_OUTPUT_STEPS = 2_000_000_000


@contextlib.contextmanager
def _masking(steps: int) -> Iterator[None]:
    """Masking inside takes ``steps`` at most, fewer if fewer are left of
    an enclosing budget (each text of an output: the output's)."""
    outer = _local.mask_steps
    budget = steps if outer < 0 else min(steps, outer)
    _local.mask_steps = budget
    try:
        yield
    finally:
        _local.mask_steps = -1 if outer < 0 else outer - (budget - _local.mask_steps)


def _spend(steps: int) -> bool:
    """Take ``steps`` from the output's masking budget; False when fewer are
    left (or outside _masking: what nothing bounds is withheld)."""
    if steps > _local.mask_steps:
        return False
    _local.mask_steps -= steps
    return True


def _mask(text: str, secrets: tuple[str, ...], *, keys: bool = True, views: list[_View] | None = None) -> str:
    """``text`` with ``secrets``, and (with ``keys``) the values of
    secret-looking keys, replaced by ``***``: raw, JSON- or XML/HTML-escaped,
    percent-encoded, in base64, or any mix of these.  ``views``: the text's, if
    worked out already."""
    pieces = _pieces(secrets)
    if text and _utf8_length(pieces) > _MAX_SECRET_BYTES:  # (a 2 MiB token revoked): withheld, as in _shown
        return "***"
    forms = _secret_forms(pieces)
    spans: list[tuple[int, int]] = []
    for view in views or _views(text):
        if forms and not _spend(forms.cost(len(view.text))):
            return "***"  # more than this output may take: withheld whole
        # Folded (as the forms are), not re.IGNORECASE: re takes the first
        # branch that matches, and case-equal letters (sigma and final sigma) in
        # two branches would let a shorter secret end a match before a longer
        # one that starts alike (and cost a search of every branch).
        found = [match.span() for match in forms.pattern.finditer(_folded(view.text))] if forms else []
        if keys:
            # Past the text itself, only keys that were escaped count: undone
            # escapes in a value would move where it seems to end.
            found += (value for key, value in _secret_values(view.text) if view.parent is None or view.moved(*key))
        spans += (view.source(start, end) for start, end in found if end > start)
    if not spans:
        return text
    out = []
    position = 0
    for start, end in sorted(spans):
        if end <= position:
            continue
        if start >= position:
            out += [text[position:start], "***"]
        position = end
    out.append(text[position:])
    return "".join(out)


def _secret_values(text: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """Where the keys that look secret and their values are in ``text`` (JSON,
    XML, a query); a value that does not end (a cut body) runs to the end."""
    spans = []
    for kind, key_pattern in enumerate(_SECRET_KEYS):
        pattern = re.compile(key_pattern)
        match = pattern.search(text)
        while match:
            start = match.end()
            if kind == 0:
                end = _json_string_end(text, start)
            elif kind == 1:
                end = text.find(text[start - 1], start)
            else:
                after = re.compile(_QUERY_VALUE_END).search(text, start)
                end = after.start() if after else -1
            end = len(text) if end < 0 else end
            spans.append((match.span(), (start, end)))
            match = pattern.search(text, end)  # on from the value's end: each stretch is scanned once
    return spans


def _json_string_end(text: str, start: int) -> int:
    """Where the JSON string that starts at ``start`` ends (its closing quote), or -1."""
    position = start
    while True:
        quote = text.find('"', position)
        if quote < 0:
            return -1
        before = quote - 1
        while before >= start and text[before] == "\\":
            before -= 1
        if (quote - 1 - before) % 2 == 0:  # not escaped
            return quote
        position = quote + 1


#: A pattern longer than this is kept out of re's own cache (512 patterns):
#: made for one answer, it would hold a megabyte or more there for good.
_CACHED_FORMS_CHARS = 4096


# A few patterns kept (each of up to a few MiB, made in up to a second).
@functools.lru_cache(maxsize=8)
def _secret_forms(secrets: tuple[str, ...]) -> _Search | None:
    """One pattern for every form of ``secrets`` that a view of a text may hold."""
    forms: set[str] = set()
    for secret in secrets:
        forms.add(secret)
        forms.update(view.text for view in _views(secret))  # as escapes are undone in the text, so in the secret
        raw = secret.encode("utf-8", "surrogatepass")
        forms.add(raw.hex())  # matched without regard to case, as all forms are
        forms.update(_base64_cores(raw))
    forms.discard("")
    if not forms:
        return None
    # Without regard to case: an upper-cased token or hex is as good as the real one.
    return _Search(set(map(_folded, forms)))


def _base64_cores(raw: bytes) -> list[str]:
    """What base64 holds of ``raw`` (4 bytes or more) wherever it sits, in
    either alphabet: its bytes sit at one of three offsets, and the
    characters made of their bits alone are the same whatever surrounds them."""
    cores: list[str] = []
    for offset in range(3 if len(raw) >= 4 else 0):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        core = encoded[(offset * 8 + 5) // 6 : (offset + len(raw)) * 8 // 6]
        cores += (core, core.translate(_URLSAFE_ALPHABET))
    return cores


_URLSAFE_ALPHABET = str.maketrans("+/", "-_")


def _folded(text: str) -> str:
    """``text`` with every letter as _fold_char gives it: as long as ``text``,
    so that where a form is found in it is where it is in ``text``."""
    return text.lower() if text.isascii() else "".join(map(_fold_char, text))


@functools.lru_cache(maxsize=4096)
def _fold_char(char: str) -> str:
    """One character for ``char`` and every other that differs from it only
    in case: s for S and the long s; sigma for its capital and final forms;
    i for I, the dotless i and the dotted capital I; k for the Kelvin sign."""
    for form in (char.upper().lower(), char.lower()):
        if len(form) == 1:
            return form
    return char.lower()[0]  # "İ": an i and a combining dot


class _Search:
    """One pattern for any of many words (the forms of secrets), and what a
    search may cost in steps (a character compared, a branch tried): from
    each character of the text, at most ``steps``, and no more than
    ``branches`` beside the characters left."""

    __slots__ = ("branches", "pattern", "steps")

    def __init__(self, words: set[str]) -> None:
        shaped = _trie(sorted(words))
        # Words that nest deeper than _TRIE_DEPTH were made to (real tokens
        # are random): every text is withheld.
        source, self.steps, self.branches = shaped or ("(?s).+", 1, 1)
        self.pattern = re.compile(source)
        if len(source) > _CACHED_FORMS_CHARS:
            re.purge()  # the only public way to take it out of re's cache

    def cost(self, length: int) -> int:
        """The most steps a search of a text of ``length`` characters takes."""
        return length * min(self.steps, length + self.branches)


#: Branchings a _Search nests at most (re's parser recurses into each; real
#: tokens, being random, branch a few levels deep).
_TRIE_DEPTH = 32


def _trie(words: list[str], start: int = 0, depth: int = 0) -> tuple[str, int, int] | None:
    """A pattern for any of ``words`` (sorted, distinct, sharing
    ``words[0][:start]``) past ``start``, the longest preferred, and its
    steps and branches (_Search); None past _TRIE_DEPTH.  Shaped as a trie,
    it tries a few branches at each character: a flat alternation of
    thousands of forms tries every one at every character of a text
    (seconds for a long name beside an answer's hundreds of tokens)."""
    ends = len(words[0]) == start  # sorted: the shared prefix itself comes first
    rest = words[1:] if ends else words
    if not rest:
        return "", 0, 0
    if depth >= _TRIE_DEPTH:
        return None
    branches, steps, tries = [], 0, 0
    for _, group in itertools.groupby(rest, key=lambda word: word[start]):
        same = list(group)
        shared = len(os.path.commonprefix([same[0], same[-1]]))  # noqa: RUF071 (characters, not paths: sorted, the first and last suffice)
        below = _trie(same, shared, depth + 1)
        if below is None:
            return None
        branches.append(re.escape(same[0][start:shared]) + below[0])
        steps, tries = max(steps, shared - start + below[1]), max(tries, below[2])
    tried = len(branches) + ends
    source = branches[0] if len(branches) == 1 and not ends else (
        "(?:" + "|".join(branches) + (")?" if ends else ")"))  # greedy: the longer form first
    return source, steps + tried, tries + tried


# Kept as text, like _ESCAPES: only masking uses them.
_GAPS = r"[\s\x00]+"
# What shows nothing between a secret's characters: Unicode's format
# characters (the soft hyphen, zero-width spaces and joiners, direction marks,
# the byte-order mark, tags), C1 controls, and the marks that change nothing
# seen (the grapheme joiner, variation selectors, Mongolian ones, Hangul
# fillers, Khmer inherent vowels, the blank Braille pattern).
_INVISIBLE = (
    "\x80-\x9f\u00ad\u034f\u0600-\u0605\u061c\u06dd\u070f\u0890\u0891\u08e2\u115f\u1160\u17b4\u17b5\u180b-\u180f"
    "\u200b-\u200f\u202a-\u202e\u2060-\u206f\u2800\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff9-\ufffb\U000110bd"
    "\U000110cd\U00013430-\U0001343f\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff"
)
_UNSEEN = r"[\s\x00" + _INVISIBLE + "]+"
# A decimal digit of another script (Arabic-Indic, Devanagari...): float() reads them all.
_OTHER_DIGIT = r"(?![0-9])\d"
# Markup a reader would not see: tags (whose quoted attribute values may hold
# < and >) and comments (which may too), found by _unmarked.
_TAG = r"<(?:[^<>\"']|\"[^\"]*\"|'[^']*')*>"
_TAG_OR_COMMENT = "<!--|" + _TAG
_BRACKETED = "<[^<>]*>"
_HTML_TAG = "<[^>]*>"  # HTML5 reads "<a<b>" as one tag
#: Base64 runs read as such: as long as the base64 of the shortest secret (a
#: Home PIN's is 6 characters), but never shorter than 6, nor longer than 8.
_BASE64_RUN = r"[A-Za-z0-9+/_-]{%d,}"
_HEX_RUN = "[0-9a-fA-F]{8,}"  # whole: "value 0041..." is read from its "e" too, and from the 0
_NUMBER = r"\d+(?:\.\d*)?(?:[eE][-+]?\d+)?"  # in any script's digits: float() reads them
#: _reveals decodes base64 and hex this many times over (hex of base64, base64 twice...).
_DECODE_DEPTH = 2
#: _reveals reads at most this much decoded text; a text that needs more is withheld.
_MAX_DECODED_CHARS = 200_000


def _reveals(text: str, secrets: tuple[str, ...], views: list[_View] | None = None) -> bool:
    """Whether ``text`` still gives a secret away to a reader who undoes more
    than _mask can place: markup between its characters (an XML comment or
    CDATA), NULs (UTF-16 inside UTF-8), spaces or line breaks (wrapped
    base64), characters that show nothing, fullwidth or styled letters and
    other scripts' digits (as _plain reads them), in any mix with the
    others, text decoded with the wrong charset (UTF-16 read as UTF-8 or
    Latin-1, mojibake: _misread; the charsets of other locales:
    _legacy_forms), more escapes than _mask undoes, base64 or hex
    of any of these, up to _DECODE_DEPTH times over.  Past the call's
    deadline it raises _OutOfTime (through _View.unescaped)."""
    pieces = _pieces(secrets)
    if _utf8_length(pieces) > _MAX_SECRET_BYTES:
        return bool(text)  # withheld, as in _shown
    wanted = _wanted(pieces)
    if wanted is None:
        return False
    # A PIN or code of digits echoed as a number: maybe without its leading zeros, as 482.0, 4.82e2 or 1.2e+16.
    if wanted.numbers and any(float(found) in wanted.numbers for found in re.findall(_NUMBER, text)):
        return True
    import html  # noqa: PLC0415 (only shown text is checked)

    readings = _readings(text.encode("latin-1", "ignore"))
    if not text.isascii():
        readings += _readings(text.encode("utf-8", "surrogatepass"))
    # Texts a reader might make of it; the many made by decoding are looked
    # through as one (a secret split across two of them is withheld too: safe).
    candidates = [text, html.unescape(text), *_without_markup(text), "\n".join(readings)]
    budget = _MAX_DECODED_CHARS
    for depth in range(_DECODE_DEPTH + 1):
        runs: set[str] = set()
        for candidate in dict.fromkeys(candidates):
            candidate_views = views if views and candidate is text else _views(candidate)
            for view in candidate_views:
                seen = [view.text]
                if view.parent is not None:  # markup that was escaped ("&lt;wbr&gt;", "%3C![CDATA[")
                    seen += _without_markup(view.text)
                # Its mojibake undone too, only looked through (runs are decoded from the text as it is);
                # in decoded text, _decoded undid it run by run (not in all of it, three times over: slow).
                misread = _misread(view.text) if depth == 0 else []
                for index, joined in enumerate(map(_plain, [*seen, *misread])):
                    folded = joined.casefold()
                    if not _spend(wanted.texts.cost(len(folded))) or wanted.texts.pattern.search(folded):
                        return True  # found, or more than this output may take: withheld, to be safe
                    if depth < _DECODE_DEPTH and index < len(seen):
                        runs.update(re.findall(wanted.base64_run, joined))
                        runs.update(re.findall(_HEX_RUN, joined))
            if len(candidate_views) > _UNESCAPE_PASSES:
                return True  # escaped more times over than the views undo: withheld, to be safe
        budget -= 4 * sum(map(len, runs))  # each run is read four ways
        if budget < 0:
            return True  # more than can be looked through: withheld, to be safe
        candidates = ["\n".join(decoded for run in runs for decoded in _decoded(run))]
    return False


def _misread(text: str) -> list[str]:
    """``text`` as it was before a server read its UTF-8 as Latin-1 or
    Windows-1252 (mojibake: "pÃ¤ss" for "päss"), up to three times over, in
    all of it or in part, or its Windows-1252 as Latin-1 ("It\x92s" for
    "It\u2019s").  (Other charsets' mojibake is looked for as _legacy_forms
    of the secrets: undoing each of them here, for every text, would cost more.)"""
    if text.isascii():  # most texts
        return []
    # Each character Latin-1 or Windows-1252 reads a byte as (in any mix), as
    # that byte: a surrogate "surrogateescape" writes as it (no Python call for each).
    as_bytes, as_chars = _byte_tables()
    found = []
    if re.search("[\x80-\x9f]", text):  # C1 controls: Windows-1252's bytes read as Latin-1
        found.append(text.translate(as_bytes).translate(as_chars))
    if not re.search("[\xc2-\xf4]", text):  # no UTF-8 lead byte read as Latin-1: no mojibake (UTF-16 read wrong)
        return found
    undone = text
    for _ in range(_MISREAD_TIMES):
        try:
            data = undone.translate(as_bytes).encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a lone surrogate of its own: no text a server could have made
            break
        # What is no UTF-8 was not mojibake (a part left as it was): it stays, read as Windows-1252.
        again = data.decode("utf-8", "surrogateescape").translate(as_chars)
        if again == undone:
            break
        undone = again
        found.append(undone)
    return found


_MISREAD_TIMES = 3


@functools.lru_cache(maxsize=1)
def _byte_tables() -> tuple[dict[int, int], dict[int, int]]:
    """For _misread: the characters Latin-1 and Windows-1252 read bytes
    0x80-0xff as, to the surrogates U+DC80-U+DCFF that stand for those
    bytes; and those back to what Windows-1252 reads (Latin-1 where it
    leaves a byte undefined)."""
    as_bytes: dict[int, int] = {}
    for codec in ("latin-1", "cp1252"):
        chars = bytes(range(0x80, 0x100)).decode(codec, _AS_WINDOWS_1252)  # one each
        as_bytes.update((ord(char), 0xDC00 + byte) for byte, char in zip(range(0x80, 0x100), chars))
    # (Windows-1252's characters come later, so they are what a byte 0x80-0x9f reads back as.)
    return as_bytes, {surrogate: char for char, surrogate in as_bytes.items()}


def _without_markup(text: str) -> list[str]:
    """``text`` as readers who drop its markup may read it, CDATA markers
    gone: without tags and comments (as XML reads it), without comments only
    (a comment inside a quoted attribute is no comment to XML, but it is to
    a reader who drops comments first), then also without whatever is
    between ``<`` and ``>`` (a tag inside an attribute), or from each ``<``
    to the next ``>`` (as HTML5 reads ``<a<b>`` and ``<b x=<>``)."""
    if "<" not in text:  # most texts
        return []
    uncdata = text.replace("<![CDATA[", "").replace("]]>", "")
    uncommented = _unmarked(uncdata, tags=False)
    # Only up to the last ">": from a "<" that none follows, _HTML_TAG would read to the end, for every one.
    closed = uncommented.rfind(">") + 1
    return [_unmarked(uncdata, tags=True), uncommented, re.sub(_BRACKETED, "", uncommented),
            re.sub(_HTML_TAG, "", uncommented[:closed]) + uncommented[closed:]]


def _unmarked(text: str, *, tags: bool) -> str:
    """``text`` without its comments (``<!--`` to the first ``-->`` after it)
    and, with ``tags``, its tags, read from the left: what
    ``re.sub(r"(?s)<!--.*?-->|" + _TAG, "", text)`` gives, in time linear in
    the text.  (That pattern's lazy ``.*?`` reads on to the end from every
    ``<!--`` that no ``-->`` closes: seconds for a text of thousands.)"""
    if "<" not in text:  # most texts: tokens, names
        return text
    last_close = text.rfind("-->")
    opener, tag_pattern = re.compile(_TAG_OR_COMMENT if tags else "<!--"), re.compile(_TAG)
    kept, position = [], 0
    found = opener.search(text)
    while found:
        start, end = found.span()
        if text.startswith("<!--", start):
            if start + 4 <= last_close:
                end = text.index("-->", start + 4) + 3
            elif not tags:
                break  # no later comment closes either
            else:  # no comment, but maybe a tag
                tag = tag_pattern.match(text, start)
                if tag is None:
                    found = opener.search(text, start + 1)
                    continue
                end = tag.end()
        kept.append(text[position:start])
        position = end
        found = opener.search(text, end)
    kept.append(text[position:])
    return "".join(kept)


def _plain(text: str) -> str:
    """``text`` as a reader sees it, to look for a secret in: without gaps
    (spaces, line breaks, NULs) and, when not ASCII, NFKC-normalised
    (fullwidth, circled or styled letters as the plain ones), without
    invisible characters, and with every decimal digit as an ASCII one."""
    if text.isascii():
        return "".join(text.split()).replace("\x00", "")  # split() splits where _GAPS' \s matches
    import unicodedata  # noqa: PLC0415 (only non-ASCII text needs it)

    if re.search(_LONG_NON_ASCII, text):
        # NFKC sorts a run of combining marks in time quadratic in its length
        # (minutes for a hostile 2 MiB): as UAX #15's stream-safe text has it,
        # a grapheme joiner (dropped below) after every 30 bounds each run.
        text = _non_starters().sub("\\g<0>\u034f", text)
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(_OTHER_DIGIT, lambda digit: str(unicodedata.decimal(digit[0], digit[0])), text)
    return re.sub(_UNSEEN, "", text)


_LONG_NON_ASCII = "[^\x00-\x7f]{31}"
#: Characters of no combining class that decompose to start with a combining
#: mark (Tibetan vowel signs, halfwidth katakana voicing marks).
_LEADING_NON_STARTERS = "\u0f73\u0f75\u0f81\uff9e\uff9f"
#: Past the last combining mark (U+1E94A in Unicode 15.1).
_NON_STARTERS_END = 0x1E950


@functools.lru_cache(maxsize=1)  # made once, in 10 ms, for the first text that may need it
def _non_starters() -> re.Pattern[str]:
    """30 characters in a row that NFKC may have to reorder (a combining
    class other than 0)."""
    import unicodedata  # noqa: PLC0415 (only non-ASCII text needs it)

    marks = [chr(code) for code in range(0x300, _NON_STARTERS_END) if unicodedata.combining(chr(code))]
    return re.compile("[" + re.escape("".join(marks) + _LEADING_NON_STARTERS) + "]{30}")


class _Wanted:
    """What _reveals looks for.  (A plain class, as _Plan.)"""

    __slots__ = ("base64_run", "numbers", "texts")

    def __init__(self, texts: _Search, numbers: frozenset[float], base64_run: str) -> None:
        self.texts = texts  # each secret's views, without gaps and case, and its hex
        self.numbers = numbers  # the secrets made of digits (float, not int: int() refuses over 4300 digits)
        self.base64_run = base64_run  # runs of base64 long enough to hold the shortest secret


@functools.lru_cache(maxsize=8)  # as _secret_forms
def _wanted(secrets: tuple[str, ...]) -> _Wanted | None:
    if not secrets:
        return None
    texts = {_plain(view.text).casefold() for secret in secrets for view in _views(secret)}
    not_ascii = [secret for secret in secrets if not secret.isascii()][:_LEGACY_SECRETS]
    texts |= {form.casefold() for secret in not_ascii for form in _legacy_forms(secret)}
    texts |= {secret.encode("utf-8", "surrogatepass").hex() for secret in secrets}
    texts.discard("")  # a secret of spaces (its hex is left)
    numbers = frozenset(float(secret) for secret in secrets if secret.isascii() and secret.isdigit())
    shortest = min(len(secret.encode("utf-8", "surrogatepass")) for secret in secrets)
    base64_run = _BASE64_RUN % min(max(-(-4 * shortest // 3), 6), 8)
    return _Wanted(_Search(texts), numbers, base64_run)


def _readings(data: bytes) -> list[str]:
    """``data`` read as UTF-8, as Windows-1252 (which is Latin-1 but for the
    C1 controls, which show nothing) and as UTF-16 from either end, from its
    first two bytes (what a reader may try on bytes of unknown encoding)."""
    texts = [data.decode("utf-8", "ignore"), data.decode("cp1252", _AS_WINDOWS_1252)]
    texts += (data[start:].decode(encoding, "ignore") for encoding in ("utf-16-le", "utf-16-be") for start in range(2))
    return list(dict.fromkeys(texts))  # (ASCII reads alike as UTF-8 and Windows-1252)


def _decoded(run: str) -> list[str]:
    """What ``run`` may say (_decoded_bytes), each as _readings reads it,
    and as UTF-8 with mojibake undone (the base64 of "pÃ¤ss")."""
    texts: list[str] = []
    for data in _decoded_bytes(run):
        readings = _readings(data)
        texts += (*readings, *_misread(readings[0]))
    return texts


def _padded(chunk: str) -> str:
    # One character left over carries no byte.
    chunk = chunk[: len(chunk) - (len(chunk) % 4 == 1)]
    return chunk + "=" * (-len(chunk) % 4)


def _decoded_bytes(run: str) -> list[bytes]:
    """What ``run`` may say in base64 (read from each of its first four
    characters, a last partial group too) or in hex (from either of its
    first two)."""
    if "=" in run:  # base64 in padded pieces, read on through as a decoder does
        pieces = [piece.translate(_STANDARD_ALPHABET) for piece in re.split("=+", run)]
        return [b"".join(binascii.a2b_base64(_padded(piece)) for piece in pieces)]
    found = []
    standard = run.translate(_STANDARD_ALPHABET)
    for start in range(4):
        found.append(binascii.a2b_base64(_padded(standard[start:])))  # as b64decode, without its checks
    for start in range(2):
        chunk = run[start:]
        chunk = chunk[: len(chunk) // 2 * 2]
        if re.fullmatch(_HEX_RUN, chunk):
            found.append(bytes.fromhex(chunk))
    return found


#: Text to show that is longer than this (no string of a Plex answer is) is
#: withheld when there are secrets to look for: looking through megabytes for
#: every form of them would cost more time and memory than a call may take.
_MAX_SHOWN_CHARS = 64 * 1024
#: So is every text, when the secrets to look for are longer than this all
#: told, in UTF-8 (plex.tv's answers hold a few dozen tokens): one pattern
#: for every form of thousands would take seconds to make, and megabytes.
_MAX_SECRET_BYTES = 32 * 1024


# Cached, as _secret_forms: a command's result masks each of its strings with the same hundreds of secrets.
@functools.lru_cache(maxsize=8)
def _utf8_length(secrets: tuple[str, ...]) -> int:
    # Their forms (hex, base64) grow with their bytes, not characters.
    return sum(len(secret.encode("utf-8", "surrogatepass")) for secret in secrets)


@functools.lru_cache(maxsize=8)
def _shortest(secrets: tuple[str, ...]) -> int:
    """How short an ASCII text may be and still give one of ``secrets``
    away: with its escapes undone and gaps dropped (as _wanted reads it), a
    number of digits without its leading zeros, or as 1e5."""
    lengths = [len(_plain(view.text)) for secret in secrets for view in _views(secret)]
    lengths += (min(len(secret.lstrip("0")) or 1, 3) for secret in secrets if secret.isascii() and secret.isdigit())
    return min(lengths)


def _shown(text: str, secrets: tuple[str, ...], *, keys: bool = True) -> str:
    """``text`` fit to show: masked, or withheld whole when a secret is still
    in it in a form that cannot be cut out."""
    secrets = _pieces(secrets)
    if secrets and (len(text) > _MAX_SHOWN_CHARS or _utf8_length(secrets) > _MAX_SECRET_BYTES):
        return "***"
    try:
        with _masking(_TEXT_STEPS):
            # Too short for any form of a secret (only non-ASCII text spells one out longer: a ligature).
            if not keys and secrets and text.isascii() and len(text) < _shortest(secrets):
                return text
            views = _views(text)
            masked = _mask(text, secrets, keys=keys, views=views)
            return "***" if _reveals(masked, secrets, views if masked is text else None) else masked
    except _OutOfTime:
        return "***"


# -----------------------------------------------------------------------------
# Decoding bodies: text, then JSON or XML
# -----------------------------------------------------------------------------
# A body is read as text first (UTF-8, unless a byte-order mark or an XML
# declaration says UTF-16, ASCII or ISO-8859-1), so that every check below
# sees characters, whatever encoding the server chose.

_BOMS = ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be"))
_XML_DECLARED = rb"""\s*<\?xml[^>]{0,200}?\sencoding\s*=\s*["']([^"']{0,40})["']"""
_XML_ENCODINGS = {
    "utf-8": "utf-8", "utf8": "utf-8", "utf-16": "utf-16", "utf-16le": "utf-16", "utf-16be": "utf-16",
    "us-ascii": "ascii", "ascii": "ascii", "iso-8859-1": "latin-1", "latin-1": "latin-1", "latin1": "latin-1",
}
#: Objects, lists (JSON) or elements and attributes (XML) a body may hold:
#: Plex answers hold tens to a few thousand, and each costs memory once parsed.
_MAX_NODES = 10_000
#: Strings (keys and values) a JSON body may hold: an account has a few hundred.
_MAX_STRINGS = 100_000
# Plex documents are shallow; anything deeper is hostile or broken.
_MAX_XML_DEPTH = 32
_LONE_SURROGATE_ESCAPE = r"\\u[dD][89a-fA-F]"  # compiled on first use, as _LONE_SURROGATE
_LONE_SURROGATE = "[\ud800-\udfff]"


def _text(body: bytes, *, strict: bool) -> str:
    """The body as text; with ``strict``, a body in an encoding plexauth does
    not read raises _Invalid, else it is read as well as can be (UTF-8, or
    failing that Latin-1, which keeps every byte for masking to see)."""
    codec = "utf-8"
    for mark, name in _BOMS:
        if body.startswith(mark):
            codec, body = name, body[len(mark):]
            break
    else:
        # Only an XML declaration names an encoding: a JSON body does not go through the pattern.
        declared = re.match(_XML_DECLARED, body) if body.lstrip()[:5] == b"<?xml" else None
        if declared:
            codec = _XML_ENCODINGS.get(declared.group(1).strip().lower().decode("ascii", "replace"), "")
            if codec == "utf-16":  # the declaration is readable, so it is not: only a byte-order mark says so
                codec = "utf-8"
            if not codec:
                if strict:
                    raise _Invalid("the XML is in an encoding plexauth does not read (only UTF-8, UTF-16, Latin-1)")
                codec = "utf-8"
    try:
        text = body.decode(codec)
    except UnicodeDecodeError:
        if strict:
            raise _Invalid(f"the body is not valid {codec.upper()}") from None
        text = body.decode("latin-1" if codec == "utf-8" else codec, "replace")
    if "\x00" in text:
        # No JSON or XML holds one; UTF-16 without its byte-order mark does.
        if strict:
            raise _Invalid("the body holds NUL characters")
        text = text.replace("\x00", "")  # an error's text, readable (and maskable) again
    return text


def _parse(body: bytes) -> Any:
    """Decode a 2xx body, JSON or XML; XML gives ``{root_tag: node}``."""
    return _parse_text(_text(body, strict=True))


def _parse_text(text: str) -> Any:
    start = text.lstrip(" \t\r\n")[:1]
    if start in ("{", "["):
        # Counted only in a text long enough to hold that many: each count reads all of it.
        if len(text) > _MAX_NODES and text.count("{") + text.count("[") > _MAX_NODES:
            raise _Invalid(f"the JSON holds more than {_MAX_NODES} objects and lists")
        if len(text) > 2 * _MAX_STRINGS and text.count('"') > 2 * _MAX_STRINGS:  # each string: 50 to 80 bytes parsed
            raise _Invalid(f"the JSON holds more than {_MAX_STRINGS} strings")
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            position = (exc.lineno, exc.colno)
        else:
            # Most answers hold no backslash at all, which "in" finds quicker than any two characters.
            if "\\" in text and re.search(_LONE_SURROGATE_ESCAPE, text):
                doc = _without_surrogates(doc)
            return doc
        raise _Invalid("invalid JSON at line {}, column {}".format(*position))
    if start == "<":
        return _parse_xml(text)
    raise _Invalid("the body is empty" if not start else "the body is neither a JSON object or list nor XML")


def _without_surrogates(value: Any) -> Any:
    """JSON's ``\\ud800`` escapes make strings that no file or terminal can take."""
    if isinstance(value, str):
        return re.sub(_LONE_SURROGATE, "\ufffd", value)
    if isinstance(value, list):
        return [_without_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {_without_surrogates(key): _without_surrogates(item) for key, item in value.items()}
    return value


def _parse_xml(text: str) -> Any:
    """XML as its JSON twin: attributes become keys, repeated or
    plural-wrapped children (``<roles><role/></roles>``) become lists.

    Parsed from text, so expat ignores the declared encoding; a DTD, an
    entity declaration or an external reference is refused whatever the
    encoding, and the depth and the number of nodes are bounded.
    """
    from xml.parsers import expat  # noqa: PLC0415 (most answers are JSON)

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    # Each open element: its tag, attributes, children as (tag, twin), and text.
    stack: list[tuple[str, dict[str, str], list[tuple[str, Any]], list[str]]] = []
    done: list[Any] = []
    nodes = 0

    def start(tag: str, attributes: dict[str, str]) -> None:
        nonlocal nodes
        nodes += 1 + len(attributes)
        if nodes > _MAX_NODES:
            raise _Invalid(f"the XML holds more than {_MAX_NODES} elements and attributes")
        if len(stack) >= _MAX_XML_DEPTH:
            raise _Invalid("the XML is nested too deeply")
        stack.append((tag, attributes, [], []))

    def end(tag: str) -> None:
        tag, attributes, children, texts = stack.pop()
        node = _xml_twin(tag, attributes, children, texts)
        if stack:
            stack[-1][2].append((tag, node))
        else:
            done.append({tag: node})

    def characters(data: str) -> None:
        stack[-1][3].append(data)  # expat reports text inside the root element only

    def refuse(*args: Any) -> NoReturn:
        raise _Invalid("XML with a DTD or entities is refused")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = characters
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(text, True)
    except expat.ExpatError as exc:
        position = (exc.lineno, exc.offset)
    else:
        return done[0]
    raise _Invalid("invalid XML at line {}, column {}".format(*position))


def _xml_twin(tag: str, attributes: dict[str, str], children: list[tuple[str, Any]], texts: list[str]) -> Any:
    if children and all(child == children[0][0] for child, _ in children) and tag == children[0][0] + "s":
        return [node for _, node in children]
    if not children and not attributes:
        return "".join(texts).strip() or {}
    node: dict[str, Any] = dict(attributes)
    groups: dict[str, list[Any]] = {}
    for child, value in children:
        groups.setdefault(child, []).append(value)
    for child, values in groups.items():
        node[child] = values[0] if len(values) == 1 else values
    return node


# -----------------------------------------------------------------------------
# Answers that are not 2xx
# -----------------------------------------------------------------------------


#: ``.errors`` keeps the first entries (plex.tv sends one); each is masked.
_KEPT_ERRORS = 16


def _error_details(text: str) -> tuple[int | None, str | None, tuple[Mapping[str, Any], ...]]:
    """(code, message, entries) of a plex.tv error body, JSON or XML, if any.

    Each entry keeps its plain members (code, message, status...): what a
    server nests under them is in ``.body``, not in ``.errors``.
    """
    try:
        doc = _parse_text(text)
    except (ValueError, RecursionError):
        return None, None, ()
    entries: list[Any] = []
    if isinstance(doc, dict):
        found = doc.get("errors", doc.get("error"))
        entries = found[:_KEPT_ERRORS] if isinstance(found, list) else [found] if found else []
    errors = tuple(
        {key: value for key, value in item.items() if isinstance(value, (str, int, float, bool)) or value is None}
        if isinstance(item, dict) else {"message": item}
        for item in entries
        if isinstance(item, (dict, str))
    )
    if not errors:
        return None, None, ()
    first = errors[0]
    message = _str(first.get("message"))
    if message is not None:
        message = " ".join(_CONTROL_CHARS.sub(" ", message).split()) or None
    return _int(first.get("code")), message, errors


#: An error's ``.message`` keeps this many characters of the server's.
_KEPT_MESSAGE = 300


def _shown_value(value: Any, secrets: tuple[str, ...]) -> Any:
    """A scalar fit to show: a string as _shown makes it, a number withheld when it spells a secret."""
    if isinstance(value, str):
        return _shown(value, secrets)
    # _shown reads digits that lost their leading zeros (a PIN echoed as 482.0) as the secret too.
    if isinstance(value, (int, float)) and not isinstance(value, bool) and _shown(str(value), secrets) != str(value):
        return "***"
    return value


def _shown_error(text: str, secrets: tuple[str, ...], *, cut: bool = False) -> tuple[str | None, tuple[Any, ...],
                                                                                    bytes]:
    """(message, errors, body) of an error body, fit to show; ``cut``: the
    body was read only in part, so its end may hold the start of a secret."""
    with _masking(_TEXT_STEPS):  # the whole error is one text
        text = _mask(text, secrets)
        _, parsed_message, parsed = _error_details(text)
        # What parsing made of the text (entities, comments, joined spaces) is
        # masked again; when that, or _reveals, finds what masking the text did
        # not, the text hides a secret where it cannot be cut out: it is withheld.
        errors = tuple({_shown(key, secrets): _shown_value(value, secrets) for key, value in entry.items()}
                       for entry in parsed)
        message = None if parsed_message is None else _shown(parsed_message, secrets)
        # A body read only in part is not kept: a secret echoed across the end of
        # what was read is not whole there, so no masking can find it.
        withheld = cut or errors != parsed or message != parsed_message or _reveals(text, secrets)
        body = b"" if withheld else text.encode("utf-8")[:_KEPT_ERROR_BODY]
        if message is not None:
            message = message[:_KEPT_MESSAGE]  # cut after masking: a cut secret would no longer be found
        return message, errors, body


def _api_error(answer: _Answer, request: _Request) -> APIError:
    secrets = request.secrets
    text = _text(answer.body, strict=False)
    # The kind of error is read from the server's own text, before masking
    # rewrites it: a Home PIN of 1041, or one echoed as a JSON number, must
    # not turn HomePinRequiredError into a plain APIError.
    kind = _error_details(text)[0]
    try:
        message, errors, body = _shown_error(text, secrets, cut=len(answer.body) >= _READ_ERROR_BODY)
    except _OutOfTime:  # the deadline passed while masking: only the status and code are kept
        message, errors, body = None, (), b""
    code = kind if _shown_value(kind, secrets) == kind else None  # a number can be a secret too (a 2FA code)
    status = answer.status
    kwargs: dict[str, Any] = {"method": request.method, "path": request.path, "errors": errors, "body": body}
    cls: type[APIError] = APIError
    if kind == _CODE_TWO_FACTOR:
        cls = TwoFactorRequiredError
    elif kind == _CODE_HOME_PIN:
        cls = HomePinRequiredError
    elif status == 429 or kind == _CODE_RATE_LIMITED:
        cls = RateLimitedError
        wait = _retry_after(answer.headers)
        kwargs["retry_after"] = wait if _shown_value(wait, secrets) == wait else None
    elif (
        status in (401, _STATUS_JWT_EXPIRED)
        or code == _CODE_NO_DEVICE_KEY
        or (status == 403 and request.on_server)
        or (status == 422 and (message or "").lower() == "invalid token")
    ):
        cls = UnauthorizedError
    elif status == 400:
        cls = BadRequestError
    return cls(status, code, message, **kwargs)


# -----------------------------------------------------------------------------
# Sending and decoding
# -----------------------------------------------------------------------------


def _send(
    config: Config,
    method: str,
    path: str,
    *,
    on_server: bool,
    query: Mapping[str, str] | None = None,
    form: Mapping[str, str] | None = None,
    json_body: Mapping[str, Any] | None = None,
    clients: bool = False,
    send_token: bool = True,
    secrets: tuple[str, ...] = (),
    deadline: float | None = None,
    redirects: bool = True,
) -> tuple[_Answer, _Request]:
    """Send one operation's request and return its 2xx answer; any other
    status becomes an ``APIError``.

    Only GETs are retried (connection failures and 429/502/503/504, with
    exponential backoff or the server's ``Retry-After`` up to a cap).  The
    whole call, retries and their waits included, ends by
    ``config.total_timeout`` (or the earlier ``deadline``).  ``clients``
    sends it to ``config.clients_url`` (JWT sign-in) instead of plex.tv.
    """
    prepared = _prepared(config)
    ends = time.monotonic() + config.total_timeout
    base, base_path = prepared.clients if clients else prepared.server if on_server else prepared.plex_tv
    url = base + path
    if query:
        url += "?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)
    headers = prepared.token_headers if send_token else prepared.tokenless_headers
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form).encode("ascii")
        headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
    elif json_body is not None:
        body = json.dumps(json_body, separators=(",", ":")).encode("utf-8")
        headers = {**headers, "Content-Type": "application/json"}
    request = _Request(config, method, url, base_path + path, headers, body, on_server,
                       (config.token or "", *secrets), ends if deadline is None else min(deadline, ends), redirects)
    _local.deadline, _local.secrets = request.deadline, request.secrets
    try:
        return _tries(request), request
    finally:
        _local.deadline, _local.secrets = math.inf, ()


def _tries(request: _Request) -> _Answer:
    """``request`` sent as often as it may be (GETs are retried): its 2xx
    answer, or the error of the last try."""
    method = request.method
    tries = request.config.retries + 1 if method == "GET" else 1
    attempt = 0
    while True:
        attempt += 1
        failure: PlexAuthError | None = None
        try:
            answer = _fetch(request)
        except TransportError as exc:
            failure, wait = exc, None
        else:
            if 200 <= answer.status < 300:
                return answer
            wait = _retry_after(answer.headers)
            if answer.status not in _RETRY_STATUSES or (wait or 0) > MAX_RETRY_WAIT_SECONDS:
                break
        delay = min(_BACKOFF_SECONDS * 2 ** (attempt - 1), MAX_RETRY_WAIT_SECONDS) if wait is None else wait
        if attempt == tries or time.monotonic() + delay >= request.deadline:
            break
        _log.debug("%s %s: try %d of %d failed, next in %.2f s", method, request.path, attempt, tries, delay)
        time.sleep(delay)
    # Raised here, outside any except block: no exception of urllib3's rides along.
    raise failure if failure is not None else _api_error(answer, request)


def _call(
    config: Config,
    method: str,
    path: str,
    build: Callable[[Any], _T],
    *,
    on_server: bool,
    query: Mapping[str, str] | None = None,
    form: Mapping[str, str] | None = None,
    json_body: Mapping[str, Any] | None = None,
    clients: bool = False,
    send_token: bool = True,
    secrets: tuple[str, ...] = (),
    minted: str | None = None,
    deadline: float | None = None,
    redirects: bool = True,
) -> _T:
    """``_send`` the request and return ``build(decoded body)``; a body that
    does not fit is a ``ResponseError``.

    ``minted`` names the object (``user``, ``pin``) whose ``authToken`` is a
    token the answer made: when the answer cannot be used, that token is
    revoked, so that none is left working that nobody has.
    """
    answer, sent = _send(config, method, path, on_server=on_server, query=query, form=form, json_body=json_body,
                         clients=clients, send_token=send_token, secrets=secrets, deadline=deadline,
                         redirects=redirects)
    _local.secrets, _local.answer_secrets = sent.secrets, [*sent.secrets]  # for the models made to mask
    try:
        return build(_parse(answer.body))
    except (ValueError, RecursionError) as exc:
        reason = str(exc) if isinstance(exc, _Invalid) else "the body could not be decoded"
    finally:
        _local.secrets, _local.answer_secrets = (), []
    try:  # read leniently, only to find the token
        holder = _unwrap(_parse_text(_text(answer.body, strict=False)), minted or "") if minted else None
    except (ValueError, RecursionError):
        holder = None
    found = holder.get("authToken") if isinstance(holder, dict) else None
    token = _token(found)
    if found and token is None:
        reason += "; the token in it could not be sent, so it could not be revoked"
    elif token is not None:
        try:
            revoking = dataclasses.replace(config, token=token)
            _send(revoking, "DELETE", "/users/signout", on_server=False, deadline=sent.deadline)
        except PlexAuthError:
            reason += "; the new token in it could not be revoked"
        else:
            reason += "; the new token in it was revoked"
    raise _response_error(sent, answer.status, reason)


def _unwrap(doc: Any, tag: str) -> Any:
    """plex.tv's XML wraps the object in its root element; JSON does not."""
    if isinstance(doc, dict) and len(doc) == 1 and isinstance(doc.get(tag), dict):
        return doc[tag]
    return doc


def _container(doc: Any) -> dict[str, Any]:
    container = doc.get("MediaContainer") if isinstance(doc, dict) else None
    if not isinstance(container, dict):
        raise _Invalid("'MediaContainer' is missing")
    return container


def _transient_token(doc: Any) -> str:
    token = _token(_container(doc).get("token"))
    if token is None:
        raise _Invalid("'MediaContainer.token' is missing or not a string")
    if token == _local.secrets[0]:
        raise _Invalid("'MediaContainer.token' is the token sent, not a new one")
    return token


def _source(doc: Any) -> SourceConnectionInformation:
    devices = _items(_container(doc).get("Device"))
    if not devices:
        raise _Invalid("'MediaContainer.Device' is missing")
    return _build(SourceConnectionInformation, devices[0])


def _account(doc: Any) -> UserPlexAccount:
    return _build(UserPlexAccount, _unwrap(doc, "user"))


def _check_flag(label: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{label} must be a bool, not {type(value).__name__}")
    return value


def _choice(enum_cls: Any, value: Any, name: str) -> str:
    if value.__class__ is enum_cls:  # the defaults, and most callers
        return str(value.value)
    try:
        return str(enum_cls(value).value)
    except ValueError:
        raise ValueError(f"{name} must be one of {[m.value for m in enum_cls]}, got {value!r}") from None


# =============================================================================
# Operations
# =============================================================================


def get_transient_token(
    config: Config,
    type_: GetTransientTokenQueryParamType = GetTransientTokenQueryParamType.DELEGATION,
    scope: Scope = Scope.ALL,
) -> str:
    """Mint a transient token on the Plex Media Server at ``config.server_url``.

    The transient token has the access of ``config.token``, lasts up to 48
    hours, and dies when the server restarts.

    Raises ``UnauthorizedError`` (401/403) when the server refuses the token,
    ``APIError`` for other statuses, ``ResponseError`` when the answer holds
    no token, ``TransportError`` when the server cannot be reached.

    Example::

        transient = get_transient_token(Config("my-app", token=token))
    """
    query = {
        "type": _choice(GetTransientTokenQueryParamType, type_, "type_"),
        "scope": _choice(Scope, scope, "scope"),
    }
    return _call(config, "GET", "/security/token", _transient_token, on_server=True, query=query)


def get_source_connection_information(
    config: Config, source: str, *, refresh: bool = False
) -> SourceConnectionInformation:
    """Get the connections and access token of a source the server knows.

    ``source`` is an identifier with its prefix, such as
    ``server://<client identifier>`` or ``provider://<identifier>``; it is
    sent percent-encoded.  ``refresh=True`` asks the server to refresh it.
    Needs an admin token or a transient token made from one.

    Raises ``UnauthorizedError`` (401/403), ``BadRequestError`` (400),
    ``APIError``, ``ResponseError`` or ``TransportError``.

    Example::

        info = get_source_connection_information(config, "server://0123abcd")
        print(info.name, [c.uri for c in info.connections])
    """
    query = {"source": _check_text("source", source)}
    if _check_flag("refresh", refresh):
        query["refresh"] = "1"
    return _call(config, "GET", "/security/resources", _source, on_server=True, query=query)


def get_token_details(config: Config) -> UserPlexAccount:
    """Read the plex.tv account behind ``config.token``.

    Raises ``UnauthorizedError`` when plex.tv does not accept the token
    (code 1001), ``RateLimitedError``, ``APIError``, ``ResponseError`` or
    ``TransportError``.

    Example::

        account = get_token_details(Config("my-app", token=token))
        print(account.username, account.subscription and account.subscription.active)
    """
    return _call(config, "GET", "/user", _account, on_server=False)


def post_users_sign_in_data(
    config: Config,
    login: str,
    password: str,
    *,
    verification_code: str | None = None,
    remember_me: bool = False,
) -> UserPlexAccount:
    """Sign in to plex.tv with a login (email or username) and password.

    The request is sent once, never retried, and carries no token.  The
    returned account's ``auth_token`` is the new token.  An answer that holds
    a new token but cannot otherwise be used is a ``ResponseError``, and its
    token is revoked first, so that none is left working that nobody has.

    Raises ``TwoFactorRequiredError`` (code 1029) when a verification code is
    needed or was wrong, ``UnauthorizedError`` for bad credentials (1001) or
    a locked-out address (1031: stop trying), ``BadRequestError``,
    ``RateLimitedError``, ``APIError``, ``ResponseError`` or
    ``TransportError``.

    Example::

        try:
            account = post_users_sign_in_data(config, "me@example.com", password)
        except TwoFactorRequiredError:
            account = post_users_sign_in_data(
                config, "me@example.com", password, verification_code=input("Code: "))
        config = dataclasses.replace(config, token=account.auth_token)
    """
    form = {
        "login": _check_text("login", login),
        "password": _check_text("password", password, secret=True),
        "rememberMe": "true" if _check_flag("remember_me", remember_me) else "false",
    }
    if verification_code is not None:
        form["verificationCode"] = _check_text("verification_code", verification_code, secret=True)
    return _call(config, "POST", "/users/signin", _account, minted="user", on_server=False, form=form,
                 send_token=False, secrets=(password, verification_code or ""))


# =============================================================================
# Password-less sign-in (PIN / link) and token upkeep
# =============================================================================


def _check_pin(config: Config, pin: Pin) -> None:
    if not isinstance(config, Config):
        raise TypeError(f"config must be a plexauth.Config, not {type(config).__name__}")
    if not isinstance(pin, Pin):
        raise TypeError(f"pin must be a plexauth.Pin (from create_pin), not {type(pin).__name__}")
    if isinstance(pin.id, bool) or not isinstance(pin.id, int):
        raise TypeError(f"pin.id must be an int, not {type(pin.id).__name__}")
    if pin.client_identifier is not None and pin.client_identifier != config.client_identifier:
        raise ValueError(
            f"the PIN was created by client identifier {pin.client_identifier!r}, not "
            f"{config.client_identifier!r}: plex.tv only answers about it to the same one"
        )


def _pin_of(config: Config, *, jwt: bool = False) -> Callable[[Any], Pin]:
    """The decoder of plex.tv's PIN answers to ``config``; with ``jwt``, a
    token in it must be a plex.tv JWT."""

    def build(doc: Any) -> Pin:
        pin = _build(Pin, _unwrap(doc, "pin"))
        if pin.client_identifier is not None and pin.client_identifier != config.client_identifier:
            raise _Invalid("the PIN is for another client identifier")
        if jwt and pin.auth_token is not None:
            _decoded_jwt(pin.auth_token)
        return pin

    return build


def create_pin(config: Config, *, strong: bool = False, key: DeviceKey | None = None) -> Pin:
    """Ask plex.tv for a PIN, the start of a sign-in without a password.

    The user enters ``pin.code`` at https://plex.tv/link (works for accounts
    made with Google, Apple or Facebook too), or, with ``strong=True``, opens
    ``pin_auth_url(config, pin)`` in a browser.  Then ``wait_for_pin`` gives
    the token.  Sent once, never retried, with no token.  With ``key`` (a
    ``DeviceKey``), the PIN is asked of ``config.clients_url`` with the key's
    public JWK, and the token it gives is a plex.tv JWT (JWT sign-in).

    Raises ``RateLimitedError``, ``APIError``, ``ResponseError`` (also for a
    PIN of another client identifier) or ``TransportError``.

    Example::

        pin = create_pin(config)
        print(f"Enter {pin.code} at https://plex.tv/link")
        config = dataclasses.replace(config, token=wait_for_pin(config, pin))
    """
    query = {"strong": "true"} if _check_flag("strong", strong) else None
    if key is None:
        return _call(config, "POST", "/pins", _pin_of(config), on_server=False, query=query, send_token=False)
    body = {"jwk": dict(_check_key(key).public_jwk), "strong": strong}
    return _call(config, "POST", "/pins", _pin_of(config), on_server=False, clients=True, json_body=body,
                 send_token=False)


def check_pin(config: Config, pin: Pin, *, key: DeviceKey | None = None) -> Pin:
    """Ask plex.tv once about ``pin``; ``auth_token`` is set once approved.

    ``config`` must have the client identifier that created the PIN
    (``ValueError`` otherwise).  Raises ``PinExpiredError`` when plex.tv no
    longer knows the PIN (404), else as ``create_pin``; an answer with a token
    that cannot be used otherwise is a ``ResponseError``, the token revoked.
    A PIN made with ``key`` is checked with it: each check carries a new
    device JWT signed by the key (which needs the extra ``jwt``).

    Example::

        if check_pin(config, pin).auth_token is None:
            print("not approved yet")
    """
    _check_pin(config, pin)
    return _ask_about_pin(config, pin, None, key, _private_key(key) if key is not None else None)


def _ask_about_pin(config: Config, pin: Pin, deadline: float | None, key: DeviceKey | None = None,
                   private: Any = None) -> Pin:
    jwt: dict[str, Any] = {}
    if key is not None:
        # No nonce to sign here: a random jti makes each check's device JWT its own.
        device = _device_jwt(config, key, private, {"scope": JWT_SCOPE, "jti": _b64url(os.urandom(16))})
        jwt = {"clients": True, "query": {"deviceJWT": device}, "secrets": (device,)}
    try:
        return _call(config, "GET", f"/pins/{pin.id}", _pin_of(config, jwt=key is not None), minted="pin",
                     on_server=False, send_token=False, deadline=deadline, **jwt)
    except APIError as exc:
        if exc.status != 404:
            raise
        gone = exc
    raise PinExpiredError(f"{gone}: PIN {pin.id} has expired, or plex.tv does not know it",
                          method=gone.method, path=gone.path) from gone


def wait_for_pin(config: Config, pin: Pin, *, timeout: float = 300.0, interval: float = 2.0,
                 key: DeviceKey | None = None) -> str:
    """Poll plex.tv until the user approves ``pin``; return the new token.

    Checks every ``interval`` seconds (never more than once a second),
    sleeping in between, and gives up with ``PinExpiredError`` when the next
    check would fall past ``timeout`` seconds from now or past the PIN's
    ``expires_at``, or when plex.tv says the PIN expired.  The whole wait,
    checks included, ends within ``timeout``.  Other errors are those of
    ``check_pin``; a PIN made with ``key`` is checked with it, as there.

    Example::

        pin = create_pin(config)
        print(f"Enter {pin.code} at https://plex.tv/link", file=sys.stderr)
        token = wait_for_pin(config, pin, timeout=600)
    """
    _check_pin(config, pin)
    timeout = _check_seconds("timeout", timeout)
    interval = max(_MIN_PIN_INTERVAL, _check_seconds("interval", interval))
    private = _private_key(key) if key is not None else None
    left = timeout
    why = f"PIN {pin.id} was not approved within {timeout:g} s"
    if pin.expires_at is not None:
        lifetime = (pin.expires_at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()
        if lifetime < timeout:
            left = lifetime
            why = f"PIN {pin.id} expired at {pin.expires_at:%Y-%m-%d %H:%M:%S} UTC before it was approved"
    deadline = time.monotonic() + left
    token = pin.auth_token  # a PIN checked before may carry it already
    while token is None:
        try:
            token = _ask_about_pin(config, pin, deadline, key, private).auth_token
        except TransportError:
            if time.monotonic() < deadline:
                raise
            token = None  # the wait's own deadline cut the check short
        if token is None:
            # Measured from the end of a check: the server never sees two closer than interval.
            if time.monotonic() + interval > deadline:
                raise PinExpiredError(why)
            _log.debug("PIN %d not approved yet; next check in %g s", pin.id, interval)
            time.sleep(interval)
    return token


def pin_auth_url(config: Config, pin: Pin, *, forward_url: str | None = None) -> str:
    """The https://app.plex.tv/auth address where the user approves a strong
    PIN (``create_pin(config, strong=True)``); plex.tv sends the browser on
    to ``forward_url`` afterwards, if given.  Makes no request.

    Example::

        pin = create_pin(config, strong=True)
        webbrowser.open(pin_auth_url(config, pin, forward_url="https://example.com/done"))
    """
    _check_pin(config, pin)
    params = [
        ("clientID", config.client_identifier),
        ("code", _check_text("pin.code", pin.code)),
        ("context[device][product]", config.product),
    ]
    if forward_url is not None:
        params.append(("forwardUrl", _check_text("forward_url", forward_url)))
    return f"{_AUTH_APP_URL}#?" + "&".join(f"{key}={urllib.parse.quote(value, safe='')}" for key, value in params)


def ping(config: Config) -> None:
    """Tell plex.tv that ``config.token`` is in use, which keeps it from
    expiring; run it from a nightly job to learn early that a token died.

    Raises ``UnauthorizedError`` when the token is no longer accepted,
    ``RateLimitedError``, ``APIError`` or ``TransportError``.

    Example::

        ping(Config.from_env())
    """
    _send(config, "GET", "/ping", on_server=False)  # the 2xx status is the answer


def sign_out(config: Config) -> None:
    """Revoke ``config.token`` on plex.tv: it stops working everywhere.

    Sent once, never retried.  Raises ``UnauthorizedError`` when the token
    was not accepted (already revoked?), ``APIError`` or ``TransportError``.

    Example::

        sign_out(config)
    """
    _send(config, "DELETE", "/users/signout", on_server=False)


# =============================================================================
# The account's servers and Home users
# =============================================================================


def _listed(cls: type[_M], wrappers: tuple[str, ...], tags: tuple[str, ...]) -> Callable[[Any], tuple[_M, ...]]:
    """A decoder of a list of ``cls``: a JSON list (or an object holding one
    under a key of ``tags``), or XML whose root (one of ``wrappers``) holds
    elements named by ``tags`` (the XML twin of ``<resources><resource/>``
    is already a list)."""

    def build(doc: Any) -> tuple[_M, ...]:
        for wrapper in wrappers:
            if isinstance(doc, dict) and len(doc) == 1 and isinstance(doc.get(wrapper), (dict, list)):
                doc = doc[wrapper]
        if isinstance(doc, dict):
            found = [doc[tag] for tag in tags if tag in doc]
            if not found:
                raise _Invalid(f"no {' or '.join(repr(tag) for tag in tags)} list")
            doc = _items(found[0])
        return tuple(_build(cls, item) for item in doc)

    return build


_resources = _listed(Resource, ("resources", "MediaContainer"), ("resource", "Device"))
_home_users = _listed(HomeUser, ("home", "MediaContainer"), ("users", "user", "User"))


def get_resources(config: Config, *, include_https: bool = True, include_relay: bool = True,
                  include_ipv6: bool = False) -> tuple[Resource, ...]:
    """The servers and clients the account behind ``config.token`` can use,
    in plex.tv's order, each with its own access token and connections.

    Raises ``UnauthorizedError``, ``RateLimitedError``, ``APIError``,
    ``ResponseError`` or ``TransportError``.

    Example::

        servers = [r for r in get_resources(config) if "server" in r.provides]
        print([(s.name, [c.uri for c in s.connections]) for s in servers])
    """
    flags = (("includeHttps", include_https), ("includeRelay", include_relay), ("includeIPv6", include_ipv6))
    query = {key: "1" if _check_flag(name, value) else "0"
             for (key, value), name in zip(flags, ("include_https", "include_relay", "include_ipv6"))}
    return _call(config, "GET", "/resources", _resources, on_server=False, query=query)


def _machine_identifier(doc: Any) -> str:
    found = _container(doc).get("machineIdentifier")
    if not isinstance(found, str) or not found:
        raise _Invalid("'MediaContainer.machineIdentifier' is missing or not a string")
    return found


#: Plex's connection URIs are some 50 characters; a longer one than this is no
#: address of a server, and masking it (it may hold a token) would take time.
_MAX_URI_CHARS = 2048


def _candidates(resource: Resource) -> list[str]:
    """The URIs ``connect`` may try, most preferred first: https before
    http (only TLS proves who answers), then local, remote, relay; IPv4
    before IPv6."""
    ranked = []
    for connection in resource.connections:
        uri = connection.uri or ""
        https = uri.lower().startswith("https://")
        if not uri or len(uri) > _MAX_URI_CHARS or (connection.local and resource.owned is False) or (
                resource.https_required and not https):
            continue  # not a URI; another's LAN is not ours to probe; plain http when the server wants https
        place = 2 if connection.relay else 0 if connection.local else 1
        ipv6 = connection.ipv6 is True or uri.partition("://")[2].startswith("[")  # a literal plex.tv did not flag
        ranked.append(((not https, place, ipv6), uri))
    ranked.sort(key=lambda item: item[0])  # stable: plex.tv's order within a rank
    return list(dict.fromkeys(uri for _, uri in ranked))


#: Probes run at once, each for the whole ``timeout``; a server has a handful
#: of connections, so a list longer than this (a hostile one) has only its
#: most preferred tried, which bounds the threads and the time spent.
_MAX_PROBES = 16


def _check_resource(resource: Any) -> Resource:
    """``resource`` if connect can use it; TypeError naming the field otherwise
    (a Resource built by hand, not decoded from plex.tv's answer)."""
    if not isinstance(resource, Resource):
        raise TypeError(f"resource must be a plexauth.Resource (from get_resources), not {type(resource).__name__}")
    _check_text("resource.client_identifier", resource.client_identifier)
    _check_text("resource.name", resource.name, optional=True)
    _check_text("resource.access_token", resource.access_token, optional=True, secret=True, header=True)
    for name in ("provides", "connections"):
        kind = str if name == "provides" else Connection
        value = getattr(resource, name)
        if not isinstance(value, tuple) or not all(isinstance(item, kind) for item in value):
            raise TypeError(f"resource.{name} must be a tuple of {kind.__name__}")
    flags = [(f"resource.{name}", getattr(resource, name)) for name in ("owned", "https_required")]
    for index, connection in enumerate(resource.connections):
        _check_text(f"resource.connections[{index}].uri", connection.uri, optional=True)
        flags += ((f"resource.connections[{index}].{name}", getattr(connection, name)) for name in ("local", "relay",
                                                                                                  "ipv6"))
    for label, value in flags:
        if value is not None and not isinstance(value, bool):
            raise TypeError(f"{label} must be a bool or None, not {type(value).__name__}")
    return resource


def connect(config: Config, resource: Resource, *, timeout: float = 5.0) -> Config:
    """The Config that reaches server ``resource`` from here: its
    ``server_url`` is the most preferred connection that proved to be that
    server, and its ``token`` the server's own ``resource.access_token``.

    Each candidate's ``/identity`` is asked at once (the 16 most preferred),
    without any token; one qualifies when it answers with the resource's
    machine identifier, so the token never reaches a stale address that now
    belongs to another device.  That proof holds where TLS checks the name,
    over https (plex.direct certificates name the server; checked with
    ``config.verify``): over plain http any device can repeat what a
    server's ``/identity`` says, so every https connection is preferred to
    every http one; then local, remote, relay.  Preference wins over speed:
    a less preferred connection is taken only once every more preferred one
    has failed, or ``timeout`` seconds (for the whole choice) have passed;
    probes still running then end by themselves, holding up neither the
    caller nor its exit.  Raises ``ServerUnreachableError`` when none
    qualifies, ``ValueError`` for a resource that is not a server.

    Example::

        server = next(r for r in get_resources(config) if "server" in r.provides)
        print(get_transient_token(connect(config, server)))
    """
    _prepared(config)  # a wrong config is the caller's TypeError, before any thread
    _check_resource(resource)
    # plex.tv writes the resource: any field could hold the server's token (or
    # the caller's, or another server's), which then must not travel to an
    # unproven address, nor show.
    secrets = tuple(secret for secret in (resource.access_token, config.token, *_answer_secrets(resource)) if secret)
    named = _shown(repr(resource.name or resource.client_identifier), secrets)
    if "server" not in resource.provides:
        provides = _shown(", ".join(resource.provides), secrets)
        raise ValueError(f"resource {named} is not a server (it provides {provides})")
    limit = _check_seconds("timeout", timeout)
    deadline = time.monotonic() + limit
    every = _candidates(resource)
    candidates = every[:_MAX_PROBES]

    def probe(uri: str) -> str | None:
        """None when ``uri`` is the server, else why not."""
        if _shown(uri, secrets) != uri:
            return "not tried: its URI holds a token"
        left = max(deadline - time.monotonic(), 0.001)
        try:
            probing = dataclasses.replace(config, server_url=uri, token=None, retries=0, total_timeout=left,
                                          timeout=min(config.timeout, left))
        except (TypeError, ValueError):
            return "not a usable URL"
        try:
            # Its own answer: a redirect would let any address pass on another server's identity.
            found = _call(probing, "GET", "/identity", _machine_identifier, on_server=True, send_token=False,
                          secrets=secrets, redirects=False)
        except TransportError as exc:
            return exc.reason
        except PlexAuthError as exc:  # an answer, but not the identity
            return exc.reason if isinstance(exc, ResponseError) else str(exc)
        if found != resource.client_identifier:
            # A machine identifier is 40 characters; a longer answer is not shown (a cut could split a token).
            shown = _shown(_printable(found), secrets) if len(found) <= 64 else f"{len(found)} characters"
            return f"answered as another server ({shown!r})"
        return None

    # Daemon threads: those still probing once the choice is made are left to
    # end by the deadline, without holding up the caller, nor its exit.
    answers: dict[str, str | None] = {}
    finished = {uri: threading.Event() for uri in candidates}

    def run(uri: str) -> None:
        try:
            answers[uri] = probe(uri)
        finally:
            finished[uri].set()

    for uri in candidates:
        threading.Thread(target=run, args=(uri,), name="plexauth-connect", daemon=True).start()
    reasons: dict[str, str] = {}
    chosen = None
    for uri in candidates:  # in preference order: the first that qualifies wins
        if not finished[uri].wait(max(0.0, deadline - time.monotonic())):
            continue  # no answer in time; a less preferred one may have answered
        reason = answers.get(uri, "the probe failed")  # without an answer: it raised (a bug, on stderr)
        if reason is None:
            chosen = uri
            break
        reasons[uri] = reason
    if chosen is None:
        attempts = tuple((_shown(uri, secrets), reasons.get(uri, f"no answer within {limit:g} s"))
                         for uri in candidates)
        what = f"no connection of {named} proved to be that server"
        if len(every) > len(candidates):
            what += f" (the {len(candidates)} most preferred of its {len(every)} connections were tried)"
        if not candidates:
            what = f"{named} has no connection that may be tried from here"
        raise ServerUnreachableError(what, method="GET", path="/identity", attempts=attempts)
    return dataclasses.replace(config, server_url=chosen, token=resource.access_token)


def get_home_users(config: Config) -> tuple[HomeUser, ...]:
    """The members of the Plex Home of the account behind ``config.token``.

    Raises ``UnauthorizedError``, ``RateLimitedError``, ``APIError``,
    ``ResponseError`` or ``TransportError``.

    Example::

        for user in get_home_users(config):
            print(user.title, "(PIN)" if user.protected else "")
    """
    return _call(config, "GET", "/home/users", _home_users, on_server=False)


def _switched(doc: Any) -> str:
    return _build(UserPlexAccount, _unwrap(doc, "user")).auth_token


def switch_home_user(config: Config, user: HomeUser, *, pin: str | None = None) -> str:
    """The plex.tv token of Home user ``user``, opened with the owner's
    ``config.token``; ``pin`` is the Home PIN (4 digits) of a protected user.

    The PIN travels only in the query of this one request, as plex.tv asks,
    and never appears in a repr, exception or log line.  Sent once, never
    retried.  Raises ``HomePinRequiredError`` (code 1041) when the PIN is
    missing or wrong, ``UnauthorizedError``, ``APIError``, ``ResponseError``
    or ``TransportError``.

    Example::

        kid = next(u for u in get_home_users(config) if u.title == "Kid")
        token = switch_home_user(config, kid, pin="1234")
        servers = get_resources(dataclasses.replace(config, token=token))
    """
    if not isinstance(user, HomeUser):
        raise TypeError(f"user must be a plexauth.HomeUser (from get_home_users), not {type(user).__name__}")
    if pin is not None and not isinstance(pin, str):
        raise TypeError(f"pin must be the Home PIN as a str, not {type(pin).__name__}")
    if pin is not None and not (len(pin) == 4 and pin.isascii() and pin.isdigit()):
        raise ValueError("pin must be the Home PIN: 4 digits as text")  # never the value: it is a secret
    path = f"/home/users/{urllib.parse.quote(_check_text('user.uuid', user.uuid), safe='')}/switch"
    return _call(config, "POST", path, _switched, minted="user", on_server=False,
                 query={"pin": pin} if pin else None, secrets=(pin or "",))


# =============================================================================
# JWT sign-in: device keys and 7-day tokens (the extra "jwt": cryptography)
# =============================================================================
# The device signs its requests with its own Ed25519 key; plex.tv answers
# with a JWT that lasts 7 days.  Only signing and verifying need cryptography,
# imported here on first use: importing plexauth never loads it.

_NEEDS_CRYPTOGRAPHY = "JWT sign-in needs the cryptography package: pip install 'plexauth-lite[jwt]'"
#: A device JWT is good for this long (plex.tv's nonce lasts 5 minutes too).
_DEVICE_JWT_SECONDS = 300
#: Clocks may disagree by this much when a JWT's times are checked.
_JWT_SKEW_SECONDS = 60
# plex.tv's public keys by kid, with when they were fetched, for each clients_url and way of
# checking its certificate (keys fetched without verify=True must not serve a caller who
# verifies); fetched again when a token names a kid not here, or when they are an hour old.
_jwt_keys: dict[tuple[str, bool | str], tuple[float, dict[str, bytes]]] = {}
_JWT_KEYS_SECONDS = 3600


def _crypto() -> tuple[Any, Any, Any]:
    """cryptography's ed25519 and serialization modules and its InvalidSignature."""
    try:
        from cryptography.exceptions import InvalidSignature  # noqa: PLC0415 (the optional extra)
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
        from cryptography.hazmat.primitives.asymmetric import ed25519  # noqa: PLC0415
    except ImportError:
        raise ModuleNotFoundError(_NEEDS_CRYPTOGRAPHY, name="cryptography") from None
    except Exception as exc:  # installed, but broken (cryptography raises RuntimeError when OpenSSL fails it)
        raise ModuleNotFoundError(f"{_NEEDS_CRYPTOGRAPHY} (the one installed failed to load: "
                                  f"{type(exc).__name__}: {_printable(str(exc)[:200])})", name="cryptography") from None
    return ed25519, serialization, InvalidSignature


def _check_key(key: Any) -> DeviceKey:
    if not isinstance(key, DeviceKey):
        raise TypeError(f"key must be a plexauth.DeviceKey (from generate_device_key or load_device_key), "
                        f"not {type(key).__name__}")
    return key


def _private_key(key: Any) -> Any:
    """``key``'s private key, for signing; ValueError when its two halves do not belong together."""
    _check_key(key)
    ed25519, serialization, _ = _crypto()
    private = ed25519.Ed25519PrivateKey.from_private_bytes(_unb64url(key.d, "d"))
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if _b64url(public) != key.public_jwk["x"]:
        raise ValueError("key.d is not the private key of key.public_jwk")
    return private


def _device_key(x: Any, d: Any) -> DeviceKey:
    kid = _thumbprint(x) if isinstance(x, str) else ""  # DeviceKey says what is wrong with x
    return DeviceKey(kid, {"kty": "OKP", "crv": "Ed25519", "x": x, "use": "sig", "alg": "EdDSA", "kid": kid}, d)


def _device_jwt(config: Config, key: DeviceKey, private: Any, claims: dict[str, Any]) -> str:
    """A device JWT: ``claims`` and who signs, for whom and until when, signed by ``private``."""
    now = int(time.time())
    claims = {**claims, "aud": "plex.tv", "iss": config.client_identifier, "iat": now,
              "exp": now + _DEVICE_JWT_SECONDS}
    signed = ".".join(_b64url(json.dumps(part, separators=(",", ":")).encode("utf-8"))
                      for part in ({"alg": "EdDSA", "kid": key.kid, "typ": "JWT"}, claims))
    return f"{signed}.{_b64url(private.sign(signed.encode('ascii')))}"


def generate_device_key() -> DeviceKey:
    """A new Ed25519 device key for JWT sign-in (needs the extra ``jwt``).

    Keep it with ``save_device_key``: it is the device's long-lived secret,
    which never leaves the machine.  Raises ``ModuleNotFoundError`` naming
    the extra when cryptography is not installed.

    Example::

        key = generate_device_key()
        save_device_key(key, os.path.expanduser("~/.config/myapp/device-key.json"))
    """
    ed25519, serialization, _ = _crypto()
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _device_key(_b64url(public), _b64url(raw))


def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)) or not isinstance(os.fspath(path), str):
        raise TypeError(f"path must be a str or an os.PathLike of str, not {type(path).__name__}")
    return os.fspath(path)


def save_device_key(key: DeviceKey, path: str | os.PathLike[str]) -> None:
    """Write ``key`` to ``path`` as a private JWK (JSON), mode 0600 and
    atomically: a reader sees the old file or the whole new one.

    The folder must exist.  Raises ``TypeError`` for a wrong argument and
    ``OSError`` when the file cannot be written.

    Example::

        save_device_key(generate_device_key(), "device-key.json")
    """
    _check_key(key)
    _write_private(_check_path(path), json.dumps({**key.public_jwk, "d": key.d}))


def load_device_key(path: str | os.PathLike[str]) -> DeviceKey:
    """Read back a key that ``save_device_key`` wrote.

    Raises ``ValueError`` naming the file when it is not this user's own
    regular file (a link, another user's, readable or writable by others) or
    not a private Ed25519 JWK; ``OSError`` (``FileNotFoundError``...) when it
    cannot be read.  Needs no cryptography.

    Example::

        key = load_device_key("device-key.json")
    """
    path = _check_path(path)
    try:
        text = _read_kept(path, folder=False)
    except _UsageError as exc:  # the file is not private
        raise ValueError(str(exc)) from None
    except OSError as exc:
        if exc.errno != errno.EILSEQ:
            raise
        text = ""  # not text: not a JWK
    if text is None and not os.path.lexists(path):  # else it is empty: not a JWK
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
    try:
        jwk = json.loads(text or "")
        if (jwk["kty"], jwk["crv"]) != ("OKP", "Ed25519"):
            raise ValueError
        key = _device_key(jwk["x"], jwk["d"])
        if jwk.get("kid", key.kid) != key.kid:
            raise ValueError
    except (ValueError, TypeError, KeyError):
        raise ValueError(f"{path} is not a private Ed25519 JWK (as save_device_key writes)") from None
    return key


def register_device_key(config: Config, key: DeviceKey) -> None:
    """Register ``key`` with plex.tv for the device ``config.client_identifier``,
    signed in with the legacy ``config.token``; ``get_jwt`` then works.

    Once a JWT is issued for a client identifier, that device's legacy token
    stops working: give the JWT device a client identifier of its own.  Sent
    once, never retried.  Raises ``ValueError`` without a token,
    ``UnauthorizedError`` when it is not accepted, ``APIError`` or
    ``TransportError``.

    Example::

        register_device_key(dataclasses.replace(config, client_identifier="my-app-jwt"), key)
    """
    _check_key(key)
    if _prepared(config) and config.token is None:
        raise ValueError("config.token must be the legacy token that registers the key")
    _send(config, "POST", "/auth/jwk", on_server=False, clients=True, json_body={"jwk": dict(key.public_jwk)})


def _nonce(doc: Any) -> str:
    nonce = _token(doc.get("nonce")) if isinstance(doc, dict) else None
    if nonce is None:
        raise _Invalid("'nonce' is missing or not a string")
    return nonce


def _issued_jwt(doc: Any) -> PlexJWT:
    token = doc.get("auth_token", doc.get("authToken")) if isinstance(doc, dict) else None
    if token is None:
        raise _Invalid("'auth_token' is missing")
    jwt = _decoded_jwt(token)
    if jwt.expires_at.timestamp() < time.time() - _JWT_SKEW_SECONDS:
        raise _Invalid(f"the JWT expired already, at {jwt.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    return jwt


def get_jwt(config: Config, key: DeviceKey, *, scope: str = JWT_SCOPE) -> PlexJWT:
    """A new plex.tv JWT for the device ``config.client_identifier``, whose
    registered ``key`` signs for it (needs the extra ``jwt``).

    Asks ``config.clients_url`` for a nonce, then sends a device JWT with it
    (a new one each time, good for 5 minutes) and gets a JWT that lasts 7
    days; no token is sent.  Its claims are decoded, not verified
    (``verify_jwt`` does that).  The whole call ends within
    ``config.total_timeout``.  Raises ``ModuleNotFoundError`` without
    cryptography; ``UnauthorizedError`` for 498 (expired) and code 1097 (no
    key registered for this device: it was removed); ``APIError`` for 422
    (the signature or thumbprint was refused); ``RateLimitedError``;
    ``ResponseError`` when the answer holds no usable JWT (it is refused:
    plex.tv revokes no single JWT, and it expires by itself);
    ``TransportError``.

    Example::

        jwt = get_jwt(config, load_device_key("device-key.json"))
        config = dataclasses.replace(config, token=jwt.token)
        print("valid until", jwt.expires_at)
    """
    _prepared(config)
    private = _private_key(key)
    _check_text("scope", scope)
    deadline = time.monotonic() + config.total_timeout
    nonce = _call(config, "GET", "/auth/nonce", _nonce, on_server=False, clients=True, send_token=False,
                  deadline=deadline)
    device = _device_jwt(config, key, private, {"nonce": nonce, "scope": scope})
    return _call(config, "POST", "/auth/token", _issued_jwt, on_server=False, clients=True,
                 json_body={"jwt": device}, send_token=False, secrets=(device,), deadline=deadline)


def _key_set(doc: Any) -> dict[str, bytes]:
    """plex.tv's Ed25519 public keys by kid (keys of other kinds are left out)."""
    found = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(found, list):
        raise _Invalid("'keys' is missing or not a list")
    keys = {}
    for jwk in found:
        try:
            if (jwk["kty"], jwk["crv"]) == ("OKP", "Ed25519") and isinstance(jwk["kid"], str):
                x = _unb64url(jwk["x"], "x")
                if len(x) == 32:
                    keys[jwk["kid"]] = x
        except (TypeError, KeyError, _Invalid):
            continue
    return keys


def verify_jwt(config: Config, token: str, *, key: DeviceKey | None = None) -> PlexJWT:
    """Check that ``token`` is a plex.tv JWT for this device, and decode it
    (needs the extra ``jwt``).

    Its signature must verify with plex.tv's key of the token's ``kid``
    (fetched from ``config.clients_url`` and kept; plex.tv rotates its keys,
    so a ``kid`` not kept fetches them once more); ``iss`` must be plex.tv,
    ``aud`` must hold plex.tv and ``config.client_identifier``, ``exp`` and
    ``iat`` must hold now (60 s of clock skew allowed), and with ``key`` it
    must have been issued to that key (its ``thumbprint``).  Raises
    ``ResponseError`` saying which check failed; when the keys are fetched,
    the errors of that request.

    Example::

        jwt = verify_jwt(config, token, key=load_device_key("device-key.json"))
        print(jwt.user.get("username"), jwt.expires_at)
    """
    _prepared(config)
    _check_text("token", token, secret=True, header=True)
    if key is not None:
        _check_key(key)
    ed25519, _, invalid_signature = _crypto()
    path = _prepared(config).clients[1] + "/auth/keys"

    def refused(reason: str) -> ResponseError:
        return ResponseError(reason, status=200, method="GET", path=path,
                             sentence=f"GET {path}: the plex.tv JWT was refused: {reason}")

    try:
        jwt = _decoded_jwt(token)
    except (ValueError, RecursionError) as exc:
        raise refused(str(exc) if isinstance(exc, _Invalid) else "its claims could not be decoded") from None
    header, claims = jwt.raw["header"], jwt.claims
    kid = header.get("kid")
    if header.get("alg") != "EdDSA" or not isinstance(kid, str):
        raise refused("its header does not name an EdDSA key ('alg', 'kid')")
    where = (config.clients_url, config.verify)
    fetched, keys = _jwt_keys.get(where, (0.0, {}))
    if kid not in keys or time.monotonic() - fetched > _JWT_KEYS_SECONDS:
        keys = _call(config, "GET", "/auth/keys", _key_set, on_server=False, clients=True, send_token=False,
                     secrets=(token,))
        _jwt_keys[where] = (time.monotonic(), keys)
    if kid not in keys:
        raise refused(f"plex.tv has no key {_printable(kid[:64])!r}")
    head, body, signature = token.split(".")
    try:
        public = ed25519.Ed25519PublicKey.from_public_bytes(keys[kid])
        public.verify(_unb64url(signature, "signature"), f"{head}.{body}".encode("ascii"))
    except (invalid_signature, _Invalid):
        raise refused(f"its signature does not verify with plex.tv's key {kid!r}") from None
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    now = time.time()
    if claims.get("iss") != "plex.tv":
        raise refused("it was not issued by plex.tv ('iss')")
    if "plex.tv" not in audiences or config.client_identifier not in audiences:
        raise refused(f"it is not meant for plex.tv and {config.client_identifier!r} ('aud')")
    for name in ("exp", "iat", "nbf"):
        if claims.get(name) is not None and type(claims[name]) is not int:  # not a bool, nor text
            raise refused(f"its {name!r} is not a whole number of seconds")
    if jwt.expires_at.timestamp() < now - _JWT_SKEW_SECONDS:
        raise refused(f"it expired at {jwt.expires_at:%Y-%m-%d %H:%M:%S} UTC")
    if (claims.get("nbf") or 0) > now + _JWT_SKEW_SECONDS:
        raise refused("it is not valid yet ('nbf')")
    if jwt.issued_at is None or jwt.issued_at.timestamp() > now + _JWT_SKEW_SECONDS:
        raise refused("it has no time of issue, or one still to come ('iat')")
    if key is not None and jwt.thumbprint != key.kid:
        raise refused(f"it was issued to another device key than {key.kid!r} ('thumbprint')")
    return jwt


# =============================================================================
# Command line
# =============================================================================

_EXIT_CODES = """\
exit codes (after 5 or 6, trying again later may help; after 2, 3 or 4 it will not):
  0  done
  1  any other error (an unexpected answer; a new token that cannot be kept, and is revoked)
  2  usage: a wrong option or variable, a kept file refused, no token or password
  3  unauthorized: the token, login or password is not accepted (plexauth login)
  4  plex.tv asks for a verification code (--code), or the one given was wrong
  5  try again later: rate limited, or plex.tv or the server unavailable (502, 503, 504)
  6  network: refused, name not found, timed out, TLS failure
  7  the server's answer could not be used
  8  login, link: the PIN expired, or was not approved within --wait
"""

_ENVIRONMENT = """\
environment (an option wins over its variable; each command reads only what it uses):
  PLEX_TOKEN_FILE, PLEX_TOKEN   the token, after --token-file and before the kept login
  PLEX_CLIENT_IDENTIFIER        X-Plex-Client-Identifier (--client-id)
  PLEX_TV_URL, PLEX_SERVER_URL  plex.tv's API (--plex-tv-url) and the Plex Media Server (--server)
  PLEX_CLIENTS_URL              clients.plex.tv's API, for login --jwt and token (--clients-url)
  PLEX_LOGIN, PLEX_PASSWORD     for sign-in and login --password
  PLEX_HOME_PIN                 for switch (--pin-file)
  XDG_CONFIG_HOME               plexauth keeps its login and client identifier in
                                $XDG_CONFIG_HOME/plexauth (else ~/.config/plexauth)

A token or password is never an argument (other users see arguments in ps).
"""


class _Exit(Exception):
    """A failure the command line explains in its own words, and its exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _UsageError(_Exit):
    """A problem with how the command was called: exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 2)


def _exit_code(exc: PlexAuthError) -> int:
    for cls, code in ((PinExpiredError, 8), (TwoFactorRequiredError, 4), (UnauthorizedError, 3),
                      (RateLimitedError, 5), (TransportError, 6), (ResponseError, 7)):
        if isinstance(exc, cls):
            return code
    return 5 if isinstance(exc, APIError) and exc.status in (502, 503, 504) else 1


# -----------------------------------------------------------------------------
# Kept files: the login and the client identifier, private to this user
# -----------------------------------------------------------------------------


def _kept_path(name: str) -> str:
    base = os.environ.get("XDG_CONFIG_HOME", "")
    if not os.path.isabs(base):  # unset, empty or relative: ignored, as the XDG specification says
        base = os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "plexauth", name)


def _write_private(path: str, text: str, *, replace: bool = True) -> None:
    """Write ``text`` to ``path`` with mode 0600, atomically: readers see the
    old file or the whole new one.  With ``replace=False`` an existing file
    is kept, so that concurrent first runs agree on one content."""
    import tempfile  # noqa: PLC0415 (only a command that keeps something needs it)

    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)),
                                     prefix=f".{os.path.basename(path)}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text + "\n")
            file.flush()
            os.fsync(file.fileno())
        if replace:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the file is there (another run made it): that one is kept
    except FileExistsError:
        pass
    finally:
        if os.path.lexists(temporary):
            os.unlink(temporary)


def _private_folder(path: str) -> str:
    """The folder of kept file ``path``, made 0700 if missing; refused unless private."""
    folder = os.path.dirname(path)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    _check_private(folder, folder=True)
    return folder


#: A kept file is a few lines of text; anything larger is not one of ours.
_MAX_KEPT_BYTES = 4096


def _check_private(path: str, *, folder: bool = False, fd: int | None = None) -> None:
    """A usage error unless ``path`` is this user's own regular file (or
    folder) that no other user can read or change: another user's file, or
    one that others can write, could hand this program someone else's
    token or device."""
    import stat  # noqa: PLC0415 (only kept files need it)

    status = os.fstat(fd) if fd is not None else os.lstat(path)  # a link is refused, never followed
    kind = "folder" if folder else "file"
    wrong = None
    if not (stat.S_ISDIR(status.st_mode) if folder else stat.S_ISREG(status.st_mode)):
        wrong = "a symbolic link" if stat.S_ISLNK(status.st_mode) else f"not a regular {kind}"
    elif status.st_uid != os.geteuid():
        wrong = f"owned by another user (uid {status.st_uid})"
    elif status.st_mode & (0o022 if folder else 0o077):
        others = "writable" if folder else "readable or writable"
        wrong = f"{others} by other users (mode {stat.S_IMODE(status.st_mode):04o})"
    if wrong:
        _refuse(path, wrong, kind)


def _refuse(path: str, wrong: str, kind: str = "file") -> NoReturn:
    remedy = {"client-id": ", or set PLEX_CLIENT_IDENTIFIER", _LOGIN_FILE: " and run plexauth login"}
    hint = remedy.get(os.path.basename(path), "") if kind == "file" else ", or chmod 700 it" if "mode" in wrong else ""
    raise _UsageError(f"refusing the kept {kind} {path}: it is {wrong}; remove it{hint}")


def _read_kept(path: str, *, folder: bool = True) -> str | None:
    """A kept file's text, or None when there is none; never follows a link.
    OSError when it cannot be read; a usage error when it (or, with
    ``folder``, its folder) is not private."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link
            _check_private(path)
        raise
    try:
        _check_private(path, fd=fd)
        if folder:
            _check_private(os.path.dirname(path), folder=True)
        data = os.read(fd, _MAX_KEPT_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_KEPT_BYTES:
        _refuse(path, f"larger than {_MAX_KEPT_BYTES} bytes")
    try:
        return data.decode("utf-8").strip() or None
    except UnicodeDecodeError:
        raise OSError(errno.EILSEQ, "not UTF-8 text") from None


def _kept_client_identifier() -> str:
    """The identifier kept for this user, made and kept on the first run."""
    path = _kept_path("client-id")
    try:
        try:
            kept = _read_kept(path)
        except OSError as exc:
            if exc.errno != errno.EILSEQ:
                raise
            kept = None  # not text: replaced, as a blank one is
        if kept:
            return kept
        made = _new_client_identifier()
        _private_folder(path)
        _write_private(path, made, replace=os.path.lexists(path))  # a blank file is replaced
        return _read_kept(path) or made  # this run's, or that of another run that wrote it first
    except OSError as exc:
        # A read-only home still works, but plex.tv sees a new device each run.
        _say(f"warning: cannot keep the client identifier in {path} ({exc.strerror}); set PLEX_CLIENT_IDENTIFIER")
    return _new_client_identifier()


def _new_client_identifier() -> str:
    import uuid  # noqa: PLC0415 (only a first run makes one)

    return f"plexauth-{uuid.uuid4().hex}"


#: The login that ``plexauth login`` keeps: the token and the client identifier it belongs to.
_LOGIN_FILE = "login.json"
#: The device key that renews the JWT of ``plexauth login --jwt``, beside its login.
_KEY_FILE = "device-key.json"


def _kept_login() -> tuple[str, str | None, str | None] | None:
    """(token, client identifier, how it was signed in) kept by ``plexauth login``, or None."""
    path = _kept_path(_LOGIN_FILE)
    try:
        text = _read_kept(path)
    except OSError as exc:
        raise _UsageError(f"cannot read the kept login {path} ({exc.strerror})") from None
    if text is None:
        return None
    try:
        kept = json.loads(text)
        token, owner, how = kept["token"], kept.get("client_identifier"), kept.get("how")
        if not all(isinstance(value, str) for value in (token, owner or "", how or "")):
            raise TypeError
    except (ValueError, TypeError, KeyError, AttributeError):
        raise _UsageError(f"the kept login {path} is not one plexauth wrote; run plexauth login again") from None
    return token, owner, how


def _keep_login(config: Config, token: str, how: str, key: DeviceKey | None = None) -> str:
    """Keep the login (and the device key of a JWT one, first); the path of the login."""
    path = _kept_path(_LOGIN_FILE)
    text = json.dumps({"token": token, "client_identifier": config.client_identifier, "how": how})
    if len(text.encode()) > _MAX_KEPT_BYTES:  # it could not be read back
        raise OSError(errno.EFBIG, "the token is too long to keep")
    _private_folder(path)  # again, just before writing: the folder may have changed during the sign-in
    if key is not None:
        save_device_key(key, _kept_path(_KEY_FILE))
    _write_private(path, text)
    return path


def _forget_key() -> str:
    """Remove the kept device key (a JWT login's long-lived secret); what was done, for the user."""
    path = _kept_path(_KEY_FILE)
    try:
        os.unlink(path)
    except FileNotFoundError:
        return ""
    except OSError as exc:
        return f"; the device key {path} could not be removed ({exc.strerror}): remove it"
    return f"; {path} is removed"


# -----------------------------------------------------------------------------
# Input: the token, the password and the prompts
# -----------------------------------------------------------------------------


def _say(*lines: str) -> None:
    """Tell the user on stderr (nowhere, if it is closed)."""
    with contextlib.suppress(OSError):
        _emit(sys.stderr, "\n".join(["plexauth: " + lines[0], *lines[1:]]))


def _stdin_is_tty() -> bool:
    try:
        return sys.stdin is not None and sys.stdin.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _read_stdin(what: str) -> str:
    if sys.stdin is None:
        raise _UsageError(f"no {what}: there is no standard input")
    try:
        text = sys.stdin.readline(_MAX_KEPT_BYTES + 2)
    except (OSError, ValueError) as exc:  # ValueError: closed
        why = getattr(exc, "strerror", None) or "it is closed"
        raise _UsageError(f"cannot read the {what} from standard input ({why})") from None
    return _whole(text, f"the {what} from standard input")


def _whole(text: str, what: str) -> str:
    # Read one character past the bound and a line ending: a longer secret is refused, not cut short.
    if len(_one_line(text)) > _MAX_KEPT_BYTES:
        raise _UsageError(f"{what} is longer than {_MAX_KEPT_BYTES} characters")
    return text


def _one_line(text: str) -> str:
    """A secret as a file or standard input gives it: its line ending goes,
    any other white space is the secret's own (a password may end in one)."""
    return text[:-1] if text.endswith("\n") else text


def _read_file(path: str, what: str) -> str:
    if path == "-":
        return _read_stdin(what)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read(_MAX_KEPT_BYTES + 2)
    except (OSError, UnicodeDecodeError) as exc:
        raise _UsageError(f"cannot read the {what} file {path!r}: {getattr(exc, 'strerror', None) or exc}") from None
    return _whole(text, f"the {what} file {path!r}")


def _cli_token(args: Any) -> tuple[str, str]:
    """The token to use and where it came from: --token-file, then
    PLEX_TOKEN_FILE, then PLEX_TOKEN, then the kept login."""
    path = getattr(args, "token_file", None)
    if path is not None or os.environ.get("PLEX_TOKEN_FILE"):
        where = f"--token-file {path}" if path is not None else f"PLEX_TOKEN_FILE ({os.environ['PLEX_TOKEN_FILE']})"
        token = _read_file(path or os.environ.get("PLEX_TOKEN_FILE") or "", "token").strip()
        if not token:
            raise _UsageError(f"the token from {where} is empty")
    elif os.environ.get("PLEX_TOKEN"):
        token, where = os.environ["PLEX_TOKEN"], "PLEX_TOKEN"
    else:
        kept = _kept_login()
        if kept is None:
            raise _UsageError("no token: run plexauth login, or set PLEX_TOKEN_FILE or PLEX_TOKEN, or use --token-file")
        (token, args.kept_owner, args.kept_how), where = kept, f"the kept login ({_kept_path(_LOGIN_FILE)})"
    try:  # what no header can carry is no token, for `token` as for the commands that send it
        _check_text(f"the token from {where}", token, secret=True, header=True)
    except (TypeError, ValueError) as exc:
        raise _UsageError(str(exc)) from None
    return token, where


def _ask(prompt: str, what: str, *, hidden: bool = False) -> str:
    """An answer typed at the terminal; empty or end of input is a usage error."""
    try:
        if hidden:
            import getpass  # noqa: PLC0415 (only a prompt needs it)

            answer = getpass.getpass(prompt, stream=sys.stderr)
        else:
            print(prompt, end="", file=sys.stderr, flush=True)
            answer = _read_stdin(what)
            if not answer:
                raise EOFError
    except EOFError:
        print(file=sys.stderr)
        raise _UsageError(f"no {what} given (end of input)") from None
    answer = _one_line(answer) if what == "password" else answer.strip()
    if not answer:
        raise _UsageError(f"no {what} given (an empty line)")
    return answer


def _credentials(args: Any) -> tuple[str, str]:
    login = args.login or os.environ.get("PLEX_LOGIN")
    if not login:
        if not _stdin_is_tty():
            raise _UsageError("no login: use --login or set PLEX_LOGIN")
        login = _ask("Login (email or username): ", "login")
    if args.password_stdin:
        password = _one_line(_read_stdin("password"))
    elif args.password_file:
        password = _one_line(_read_file(args.password_file, "password"))
    elif os.environ.get("PLEX_PASSWORD"):
        password = os.environ["PLEX_PASSWORD"]
    elif _stdin_is_tty():
        password = _ask("Password: ", "password", hidden=True)
    else:
        raise _UsageError(
            "no password: set PLEX_PASSWORD, or use --password-file or --password-stdin "
            "(standard input is not a terminal, so there is no prompt)"
        )
    if not password:
        raise _UsageError("the password is empty")
    return login, password


#: How many verification codes a terminal user may type before the sign-in gives up.
_CODE_TRIES = 3


def _password_sign_in(args: Any, config: Config) -> UserPlexAccount:
    login, password = _credentials(args)
    args.secrets.append(password)
    code = args.code
    typed = 0  # codes typed at the prompt so far
    while True:
        args.secrets.append(code or "")
        try:
            return post_users_sign_in_data(config, login, password, verification_code=code,
                                           remember_me=args.remember_me)
        except TwoFactorRequiredError as exc:
            if args.code is not None:
                raise _Exit(f"{exc}: the code given with --code was not accepted", 4) from None
            if not _stdin_is_tty():
                raise _Exit(f"{exc}: give it with --code (there is no prompt off a terminal)", 4) from None
            if typed == _CODE_TRIES:
                raise _Exit(f"{exc}: {_CODE_TRIES} codes were not accepted; sign in again", 4) from None
            if typed:
                _say("that code was not accepted; try again (the app shows a new one every 30 s)")
            typed += 1
            code = _ask("Verification code: ", "verification code", hidden=True)


def _pin_sign_in(args: Any, config: Config, key: DeviceKey | None = None) -> str:
    try:
        wait = _check_seconds("--wait", args.wait)
    except (TypeError, ValueError) as exc:
        raise _UsageError(str(exc)) from None
    pin = create_pin(config, strong=args.oauth, key=key)
    until = f" (waiting up to {wait:g} s)"
    if args.oauth:
        _say(f"open this address in a browser and sign in{until}:", pin_auth_url(config, pin))
    else:
        _say(f"go to {_LINK_URL} and enter the code {_printable(pin.code)}{until}")
    return wait_for_pin(config, pin, timeout=wait, key=key)


def _hand_over(config: Config, token: str, deliver: Callable[[], None], what: str) -> None:
    """``deliver`` the token this run made (save, keep or print it); if that
    fails, revoke it rather than leave a working token that nobody has."""
    try:
        deliver()
    except (OSError, _UsageError) as exc:  # _UsageError: the kept folder, checked again, is refused
        why = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)
        try:
            sign_out(dataclasses.replace(config, token=token))
        except PlexAuthError:
            fate = "it could not be revoked either: remove the device in the Plex app's settings"
        else:
            fate = "it was revoked, so that no working token is left behind; sign in again"
        raise _Exit(f"cannot {what} ({why}); {fate}") from None


def _check_save_target(path: str | None) -> None:
    """Checked before a token is made: a new token that cannot be written would be lost."""
    if path:
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
            raise _UsageError(f"cannot write {path}: {folder} is not a folder this user can write to")
        if os.path.lexists(path) and (os.path.islink(path) or not os.path.isfile(path)):
            raise _UsageError(f"cannot write {path}: it is not a regular file (a folder, a link...)")


def _save_or_print(args: Any, config: Config, token: str, data: dict[str, Any], answer: Sequence[Any] = ()) -> None:
    """sign-in and link: the token to --save-token's file, else to stdout."""
    if args.save_token:
        _hand_over(config, token, lambda: _write_private(args.save_token, token),
                   f"write the new token to {args.save_token}")
        _say(f"token saved to {args.save_token}")
        if args.json and args.show_token:
            _show(args, {**data, "authToken": token}, [], token=token, answer=answer)
        elif args.json:  # saved, not asked for: masked wherever the server repeats it
            args.secrets.append(token)
            _show(args, data, [], answer=answer)
    else:
        _hand_over(config, token, lambda: _show(args, {**data, "authToken": token}, [token], token=token,
                                                answer=answer), "print the new token")


# -----------------------------------------------------------------------------
# Output
# -----------------------------------------------------------------------------


def _show(args: Any, data: dict[str, Any], lines: list[str], *, token: str | None = None,
          answer: Sequence[Any] = ()) -> None:
    """Print a command's result: what the server sent, with the run's own
    secrets and those of the ``answer`` it came from (models) masked (a
    server may echo them anywhere), except ``token``, the new token this
    command was asked to print (it may hold a PIN's digits)."""
    secrets = tuple(secret for secret in (*args.secrets, *_answer_secrets(*answer)) if secret != token)
    # Each string on its own, before JSON escapes multiply it; JSON escapes control characters itself.
    with _masking(_OUTPUT_STEPS):  # one budget for the whole result: past it, what is left is withheld
        shown = json.dumps(_masked(data, secrets, token), indent=2, default=str) if args.json else "\n".join(
            _printable(line) for line in _masked(lines, secrets, token))
    _emit(sys.stdout, shown)


def _masked(value: _T, secrets: tuple[str, ...], token: str | None = None) -> _T:
    """The strings in ``value`` (a dict, list or string) with ``secrets``
    masked, except ``token`` (it may hold a PIN's digits)."""
    if isinstance(value, str):
        if token and token in value:  # the token as asked for; what is around it masked as ever
            return token.join(_masked(part, secrets) for part in value.split(token))  # type: ignore[return-value]
        return _shown(value, secrets, keys=False)  # type: ignore[return-value]
    if isinstance(value, dict):
        return {key: _masked(item, secrets, token) for key, item in value.items()}  # type: ignore[return-value]
    if isinstance(value, list):
        return [_masked(item, secrets, token) for item in value]  # type: ignore[return-value]
    return value


class _Unwritable(OSError):
    """Standard output or error is closed, full or gone."""


def _emit(stream: Any, text: str) -> None:
    """Write a line that a terminal of any encoding can take; _Unwritable
    when it cannot be written (closed: ``>&-``, full, a broken pipe)."""
    if stream is None:  # started with the stream closed
        raise _Unwritable(errno.EBADF, "it is closed")
    try:
        try:
            stream.write(text + "\n")
        except UnicodeEncodeError:
            encoding = getattr(stream, "encoding", None) or "utf-8"
            stream.write((text + "\n").encode(encoding, "backslashreplace").decode(encoding))
        stream.flush()
    except (OSError, ValueError) as exc:  # ValueError: closed while running
        raise _Unwritable(getattr(exc, "errno", None) or errno.EBADF,
                          getattr(exc, "strerror", None) or "it is closed") from None


#: What a server sent may hold terminal escapes (ESC, CR, BEL...) that would
#: forge or hide lines; the command line shows them as \x.. escapes.
_UNPRINTABLE = "[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]"  # and the bidi controls


def _printable(text: str) -> str:
    def escaped(match: Any) -> str:
        code = ord(match.group())
        return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"

    return re.sub(_UNPRINTABLE, escaped, text)


def _jwt_expiry(token: str | None) -> datetime.datetime | None:
    """When ``token`` expires, if it is a plex.tv JWT (its claims say so)."""
    try:
        return _decoded_jwt(token).expires_at
    except (ValueError, RecursionError):
        return None


def _account_summary(account: UserPlexAccount, token: str | None = None) -> tuple[dict[str, Any], list[str]]:
    subscription = account.subscription
    when = _jwt_expiry(token) or account.remember_expires_at  # a JWT's own, else what plex.tv says
    expires = when.isoformat() if when else None
    data: dict[str, Any] = {
        "id": account.id,
        "uuid": account.uuid,
        "username": account.username,
        "title": account.title,
        "email": account.email,
        "subscription": None if subscription is None else {
            "active": subscription.active,
            "plan": subscription.plan,
            "status": subscription.status,
            "features": list(subscription.features),
        },
        "tokenExpiresAt": expires,
    }
    plan = "none"
    if subscription is not None:
        plan = f"{'active' if subscription.active else 'inactive'} ({subscription.plan or subscription.status or '?'})"
    lines = [
        f"username: {account.username}",
        f"email: {account.email or '-'}",
        f"id: {account.id}",
        f"subscription: {plan}",
        f"token expires: {expires or 'unknown'}",
    ]
    return data, lines


# -----------------------------------------------------------------------------
# The commands
# -----------------------------------------------------------------------------

# Config fields the command line sets: (field, option, variable).
_SETTINGS = (
    ("server_url", "--server", "PLEX_SERVER_URL"),
    ("plex_tv_url", "--plex-tv-url", "PLEX_TV_URL"),
    ("clients_url", "--clients-url", "PLEX_CLIENTS_URL"),
    ("client_identifier", "--client-id", "PLEX_CLIENT_IDENTIFIER"),
    ("timeout", "--timeout", None),
    ("total_timeout", "--total-timeout", None),
    ("retries", "--retries", None),
)


def _config(args: Any, *, token: bool = True, own_client: bool = False) -> Config:
    """The Config of this run, from the options the command takes and then
    their variables; an error names the option or variable it came from.
    Without a client identifier given, the one kept for this user, or with
    ``own_client`` a new one (that of a JWT login)."""
    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for field, option, variable in _SETTINGS:
        dest = option[2:].replace("-", "_")
        if dest not in args.uses:
            continue
        if hasattr(args, dest):
            values[field], labels[field] = getattr(args, dest), option
        elif variable and os.environ.get(variable):
            values[field], labels[field] = os.environ[variable], variable
    if token:
        values["token"], where = _cli_token(args)
        labels["token"] = f"the token from {where}"
        args.secrets.append(values["token"])
        args.token_source = where
    kept_owner = getattr(args, "kept_owner", None)
    if "client_identifier" not in values and kept_owner:
        values["client_identifier"] = kept_owner  # the kept token's own
        labels["client_identifier"] = "the kept login's client identifier"
    try:
        config = Config(**{"client_identifier": "plexauth", **values})
    except (TypeError, ValueError) as exc:
        text = str(exc)
        for field, label in labels.items():
            text = text.replace(f"Config.{field}", label)
        raise _UsageError(text) from None
    if "client_identifier" not in values and own_client:
        config = dataclasses.replace(config, client_identifier=_new_client_identifier())
    elif "client_identifier" not in values:  # made and kept only once the rest is known to be right
        try:
            config = dataclasses.replace(config, client_identifier=_kept_client_identifier())
        except ValueError as exc:
            where = f"the client identifier kept in {_kept_path('client-id')}"
            raise _UsageError(f"{str(exc).replace('Config.client_identifier', where)}; remove it") from None
    return config


def _cmd_login(args: Any) -> int:
    password_options = [o for o, given in (("--login", args.login), ("--password-file", args.password_file),
                                           ("--password-stdin", args.password_stdin), ("--code", args.code),
                                           ("--remember-me", args.remember_me)) if given]
    pin_options = [o for o, given in (("--jwt", args.jwt), ("--oauth", args.oauth), ("--wait", args.wait != _PIN_WAIT))
                   if given]
    if password_options and not args.password:
        raise _UsageError(f"{password_options[0]} is for a sign-in with a password: add --password")
    if pin_options and args.password:
        raise _UsageError(f"{pin_options[0]} is for a sign-in with a code: leave out --password")
    # A JWT device gets a client identifier of its own: a JWT issued for one ends its legacy token.
    config = _config(args, token=False, own_client=args.jwt)
    try:
        _private_folder(_kept_path(_LOGIN_FILE))  # before signing in: a token that cannot be kept would be lost
    except OSError as exc:
        raise _UsageError(f"cannot keep the login in {os.path.dirname(_kept_path(_LOGIN_FILE))} "
                          f"({exc.strerror}); see plexauth --help") from None
    lock = _login_lock()
    try:
        return _login(args, config)
    finally:
        os.close(lock)  # and the lock with it


def _login_lock() -> int:
    """One login at a time for this user: two at once would each make a
    token, and the one kept second would leave the other working unkept."""
    import fcntl  # noqa: PLC0415 (only login locks)

    path = _kept_path("login.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise _UsageError(f"cannot lock {path} ({exc.strerror}); remove it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise _UsageError("another plexauth login is running for this user; let it finish first") from None
    return fd


def _login(args: Any, config: Config) -> int:
    try:
        replaced = _kept_login()
    except _UsageError:  # one that cannot be read is replaced, not revoked
        replaced = None
    how = "password" if args.password else "jwt" if args.jwt else "pin"
    key = generate_device_key() if args.jwt else None  # before anything is asked of plex.tv
    token = _password_sign_in(args, config).auth_token if args.password else _pin_sign_in(args, config, key)
    kept: list[str] = []
    _hand_over(config, token, lambda: kept.append(_keep_login(config, token, how, key)),
               f"keep the new token in {_kept_path(_LOGIN_FILE)}")
    forgotten = "" if key is not None else _forget_key()  # an earlier JWT login's key renews nothing now
    _say(f"logged in: the token is kept in {kept[0]}{forgotten}; plexauth status shows the account")
    if replaced is not None and replaced[0] != token:
        # The token it replaces would otherwise keep working with nobody holding it.
        try:
            sign_out(dataclasses.replace(config, token=replaced[0],
                                         client_identifier=replaced[1] or config.client_identifier))
        except (UnauthorizedError, ValueError):
            pass  # dead already, or never a token that could be sent
        except PlexAuthError as exc:
            _say(f"warning: the token kept before could not be revoked ({exc}); remove the device in the Plex app")
    return 0


def _cmd_status(args: Any) -> int:
    config = _config(args)
    head = {"tokenFrom": args.token_source, "clientIdentifier": config.client_identifier}
    lines = [f"token from: {args.token_source}", f"client identifier: {config.client_identifier}"]
    try:
        account = get_token_details(config)
    except UnauthorizedError as exc:
        raise _Exit(f"{exc}: the token from {args.token_source} is not accepted; run plexauth login", 3) from None
    data, more = _account_summary(account, config.token)
    _show(args, {**head, **data}, lines + more, answer=[account])
    return 0


def _cmd_token(args: Any) -> int:
    token, _ = _cli_token(args)
    if getattr(args, "kept_how", None) == "jwt":
        token = _renewed(args, token)
    _emit(sys.stdout, token)
    return 0


#: ``plexauth token`` renews a kept JWT with less than this left (a daily cron job keeps it fresh).
_RENEW_WITHIN = datetime.timedelta(days=1)


def _renewed(args: Any, token: str) -> str:
    """The kept JWT, renewed with the kept device key when it has less than a
    day left; while it is still valid, a renewal that fails only warns."""
    expires = _jwt_expiry(token)
    now = datetime.datetime.now(datetime.timezone.utc)
    if expires is not None and expires - now > _RENEW_WITHIN:
        return token
    args.secrets.append(token)
    config = _config(args, token=False)
    path = _kept_path(_KEY_FILE)
    try:
        try:
            key = load_device_key(path)
            renewed = get_jwt(config, key).token
        except (OSError, ValueError) as exc:  # ValueError: the key's file, or its halves that do not match
            why = f"cannot read the device key {path} ({exc.strerror})" if isinstance(exc, OSError) else (
                str(exc) if path in str(exc) else f"the device key {path} cannot sign ({exc})")
            raise _UsageError(f"{why}; run plexauth login --jwt") from None
    except (PlexAuthError, _UsageError, ModuleNotFoundError) as exc:
        if expires is None or expires <= now:
            raise
        # The kept token still works: a cron job gets it, and the warning says why it was not renewed.
        _say(f"warning: the token could not be renewed ({_shown(str(exc), tuple(args.secrets))}); "
             f"it is good until {expires:%Y-%m-%d %H:%M} UTC")
        return token
    try:
        _keep_login(config, renewed, "jwt")
    except (OSError, _UsageError) as exc:  # it lasts its 7 days all the same; the next run renews again
        why = (exc.strerror or type(exc).__name__) if isinstance(exc, OSError) else str(exc)
        _say(f"warning: the renewed token could not be kept in {_kept_path(_LOGIN_FILE)} ({why})")
    return renewed


def _cmd_logout(args: Any) -> int:
    config = _config(args)
    try:
        sign_out(config)
        said = "the token no longer works"
    except UnauthorizedError:
        said = "the token was not accepted already"
    if args.token_source.startswith("the kept login"):
        try:
            os.unlink(_kept_path(_LOGIN_FILE))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _Exit(f"{said}, but {_kept_path(_LOGIN_FILE)} could not be removed ({exc.strerror}); "
                        "remove it") from None
        said += f"; {_kept_path(_LOGIN_FILE)} is removed"
        if args.kept_how == "jwt":
            said += _forget_key()  # without it, no token can be had again
    _say(f"logged out: {said}")
    return 0


def _cmd_sign_in(args: Any) -> int:
    _check_save_target(args.save_token)
    config = _config(args, token=False)
    account = _password_sign_in(args, config)
    _save_or_print(args, config, account.auth_token, _account_summary(account)[0], [account])
    return 0


def _cmd_link(args: Any) -> int:
    _check_save_target(args.save_token)
    config = _config(args, token=False)
    _save_or_print(args, config, _pin_sign_in(args, config), {})
    return 0


def _cmd_whoami(args: Any) -> int:
    account = get_token_details(_config(args))
    data, lines = _account_summary(account)
    _show(args, data, lines, answer=[account])
    return 0


def _cmd_ping(args: Any) -> int:
    ping(_config(args))
    return 0


def _cmd_sign_out(args: Any) -> int:
    sign_out(_config(args))
    _say("signed out: the token no longer works")
    return 0


def _cmd_transient_token(args: Any) -> int:
    token = get_transient_token(_config(args), args.type, args.scope)
    _show(args, {"token": token}, [token])
    return 0


def _connections_shown(connections: tuple[Connection, ...]) -> tuple[list[dict[str, Any]], list[str]]:
    data = [{"uri": c.uri, "protocol": c.protocol, "address": c.address, "port": c.port, "local": c.local,
             "relay": c.relay} for c in connections]
    lines = [f"connection: {c.uri or '-'} ({'relay' if c.relay else 'local' if c.local else 'remote'})"
             for c in connections]
    return data, lines


def _servers(config: Config) -> list[Resource]:
    return [resource for resource in get_resources(config) if "server" in resource.provides]


def _cmd_servers(args: Any) -> int:
    data, lines = [], []
    servers = _servers(_config(args))
    for resource in servers:
        connections, connection_lines = _connections_shown(resource.connections)
        whose = "owned" if resource.owned else f"shared by {resource.source_title or '?'}"
        data.append({"name": resource.name, "clientIdentifier": resource.client_identifier,
                     "owned": resource.owned, "sourceTitle": resource.source_title, "connections": connections})
        lines += [f"{resource.name or '-'} ({whose}): {resource.client_identifier}",
                  *(f"  {line}" for line in connection_lines)]
    # Every token of the answer masked in every entry: plex.tv could put one server's in another's.
    _show(args, {"servers": data}, lines or ["no servers"], answer=servers)
    return 0


def _named(kind: str, wanted: str, found: list[_T], names: Callable[[_T], tuple[str | None, ...]],
           listed_by: str) -> _T:
    """The one of ``found`` that ``wanted`` names, else a usage error."""
    matches = [item for item in found if wanted in names(item)]
    if len(matches) != 1:
        how = "several" if matches else "no"
        hint = "; use the identifier" if matches else ""
        raise _UsageError(f"{how} {kind}{'s' if matches else ''} named {wanted!r} ({listed_by} lists them{hint})")
    return matches[0]


def _cmd_connect(args: Any) -> int:
    _check_save_target(args.save_token)
    config = _config(args)
    resource = _named("server", args.server_name, _servers(config), lambda r: (r.name, r.client_identifier),
                    "plexauth servers")
    try:
        chosen = connect(config, resource)
    except ServerUnreachableError as exc:  # what each connection did, for the user to act on
        tried = "; ".join(f"{uri}: {reason}" for uri, reason in exc.attempts)
        # The connections come from plex.tv, which could put the server's token in one.
        text = _shown(f"{exc}{' (' + tried + ')' if tried else ''}", _answer_secrets(resource))
        raise _Exit(text, _exit_code(exc)) from None
    token = chosen.token or ""  # the server's own: printed only when asked, as source-info's
    data: dict[str, Any] = {"url": chosen.server_url, "name": resource.name,
                            "clientIdentifier": resource.client_identifier}
    if args.save_token:
        _write_private(args.save_token, token)
        _say(f"the server's token saved to {args.save_token}")
    if args.show_token:
        data["accessToken"] = token
    _show(args, data, [chosen.server_url] + ([f"access token: {token}"] if args.show_token else []),
          token=token if args.show_token else None, answer=[resource])
    return 0


def _cmd_home_users(args: Any) -> int:
    users = get_home_users(_config(args))
    data = [{"id": u.id, "uuid": u.uuid, "title": u.title, "username": u.username, "admin": u.admin,
             "protected": u.protected, "restricted": u.restricted} for u in users]
    lines = [f"{u.title or '-'} ({u.username or '-'}): {u.uuid}{' admin' if u.admin else ''}"
             f"{' PIN' if u.protected else ''}" for u in users]
    _show(args, {"users": data}, lines, answer=users)
    return 0


def _cmd_switch(args: Any) -> int:
    _check_save_target(args.save_token)
    config = _config(args)
    user = _named("Home user", args.user, list(get_home_users(config)), lambda u: (u.title, u.username, u.uuid),
                "plexauth home-users")
    pin = os.environ.get("PLEX_HOME_PIN") or None
    if args.pin_file:
        pin = _one_line(_read_file(args.pin_file, "Home PIN")).strip()
    elif pin is None and user.protected:
        if not _stdin_is_tty():
            raise _UsageError(f"{args.user!r} is protected: set PLEX_HOME_PIN or use --pin-file")
        pin = _ask("Home PIN: ", "Home PIN", hidden=True)
    args.secrets.append(pin or "")
    try:
        token = switch_home_user(config, user, pin=pin)
    except ValueError as exc:  # the PIN given is not 4 digits
        raise _UsageError(str(exc)) from None
    _save_or_print(args, config, token, {"uuid": user.uuid, "title": user.title}, [user])
    return 0


def _cmd_source_info(args: Any) -> int:
    if not args.source.startswith(("server://", "provider://")):
        raise _UsageError(f"SOURCE must start with server:// or provider:// (as in server://<the server's "
                          f"machine identifier>), got {args.source!r}")
    info = get_source_connection_information(_config(args), args.source, refresh=args.refresh)
    connections, connection_lines = _connections_shown(info.connections)
    data: dict[str, Any] = {"name": info.name, "clientIdentifier": info.client_identifier, "connections": connections}
    lines = [f"name: {info.name or '-'}", f"client identifier: {info.client_identifier or '-'}", *connection_lines]
    if args.show_token:
        data["accessToken"] = info.access_token
        lines.append(f"access token: {info.access_token or '-'}")
    _show(args, data, lines, token=info.access_token if args.show_token else None, answer=[info])
    return 0


# -----------------------------------------------------------------------------
# The parser and main()
# -----------------------------------------------------------------------------

_PIN_WAIT = 300.0


def _parser() -> Any:
    import argparse  # noqa: PLC0415 (only the command line needs it)

    def group(title: str, *options: tuple[tuple[str, ...], dict[str, Any]]) -> Any:
        # Options that may come before or after the subcommand; SUPPRESS keeps a
        # subcommand's parser from resetting what was given before it.
        parent = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        added = parent.add_argument_group(title)
        for flags, kwargs in options:
            added.add_argument(*flags, default=argparse.SUPPRESS, **kwargs)
        return parent

    seconds: dict[str, Any] = {"metavar": "SECONDS", "type": float}
    plex_tv = group("plex.tv", (("--plex-tv-url",), {"metavar": "URL", "help": "plex.tv's API (PLEX_TV_URL; "
                                                     "default https://plex.tv/api/v2)"}))
    clients = group("clients.plex.tv", (("--clients-url",), {"metavar": "URL", "help": "clients.plex.tv's API, for "
                                                           "JWT sign-in (PLEX_CLIENTS_URL; default "
                                                           "https://clients.plex.tv/api/v2)"}))
    server = group("server", (("--server",), {"metavar": "URL", "help": "the Plex Media Server (PLEX_SERVER_URL; "
                                              "default http://localhost:32400)"}))
    token = group("token", (("--token-file",), {"metavar": "FILE", "help": "read the token from FILE, - for standard "
                                                "input (PLEX_TOKEN_FILE; else PLEX_TOKEN; else the kept login)"}))
    connection = group(
        "connection",
        (("--client-id",), {"metavar": "ID", "help": "X-Plex-Client-Identifier (PLEX_CLIENT_IDENTIFIER; "
                            "else the kept login's, else one kept for this user)"}),
        (("--timeout",), {**seconds, "help": "seconds to connect, and for each read (default 10)"}),
        (("--total-timeout",), {**seconds, "help": "seconds each request may take in all, retries included "
                                "(default 60)"}),
        (("--retries",), {"metavar": "N", "type": int, "help": "extra tries of a failed GET, 0 to 10 (default 2)"}),
    )
    as_json = group("output", (("--json",), {"action": "store_true", "help": "print JSON"}))
    verbose = group("output", (("-v", "--verbose"), {"action": "store_true",
                                                      "help": "DEBUG logs and tracebacks on stderr (secrets hidden)"}))
    everything = [plex_tv, server, token, connection, as_json, verbose]

    parser = argparse.ArgumentParser(
        prog="plexauth", description="Sign in to plex.tv once, then use the token from scripts and cron jobs.",
        epilog=_EXIT_CODES + "\n" + _ENVIRONMENT, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=everything, allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"plexauth {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, run: Callable[[Any], int], text: str, *parents: Any) -> Any:
        sub = commands.add_parser(name, parents=[*parents, verbose], help=text, description=text,
                                  epilog=_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
                                  allow_abbrev=False)
        sub.set_defaults(run=run, uses={action.dest for parent in (*parents, verbose) for action in parent._actions})
        return sub

    def password_options(sub: Any) -> None:
        sub.add_argument("--login", help="email or username (PLEX_LOGIN)")
        source = sub.add_mutually_exclusive_group()
        source.add_argument("--password-file", metavar="FILE",
                            help="read the password from FILE's first line (else PLEX_PASSWORD, else a prompt)")
        source.add_argument("--password-stdin", action="store_true",
                            help="read the password from the first line of standard input")
        sub.add_argument("--code", help="the verification code, for an account with two-factor authentication")
        sub.add_argument("--remember-me", action="store_true", help="ask for a long-lived token")

    def pin_options(sub: Any) -> None:
        sub.add_argument("--oauth", action="store_true", help="print a plex.tv sign-in address instead of a code")
        sub.add_argument("--wait", metavar="SECONDS", type=float, default=_PIN_WAIT,
                         help=f"how long to wait for the code to be entered (default {_PIN_WAIT:g})")

    sign_in = [plex_tv, connection, as_json]
    login = command("login", _cmd_login, f"sign in (a code to enter at {_LINK_URL}; with --password, login and "
                    "password) and keep the token for the commands that follow", plex_tv, clients, connection)
    login.add_argument("--password", action="store_true", help="sign in with login and password instead of a code")
    login.add_argument("--jwt", action="store_true", help="sign in with a code for a 7-day JWT, renewed by plexauth "
                       "token with a device key kept beside it (a new client identifier unless given; needs "
                       "plexauth-lite[jwt])")
    password_options(login)
    pin_options(login)
    with_token = [plex_tv, token, connection]
    command("status", _cmd_status, "say which token is used, its account, client identifier and expiry; "
            "exit 3 if it is dead", *with_token, as_json)
    command("token", _cmd_token, "print the token in use, e.g. PLEX_TOKEN=$(plexauth token); a kept JWT with "
            "less than a day left is renewed first", token, clients)
    command("logout", _cmd_logout, "revoke the token on plex.tv, and forget it if it is the kept one", *with_token)

    sign_in_command = command("sign-in", _cmd_sign_in, "sign in with login and password; print the new token",
                              *sign_in)
    password_options(sign_in_command)
    link = command("link", _cmd_link, f"sign in with a code to enter at {_LINK_URL}; print the new token", *sign_in)
    pin_options(link)
    for sub in (sign_in_command, link):
        sub.add_argument("--save-token", metavar="FILE", help="write the token to FILE (mode 0600) instead")
        sub.add_argument("--show-token", action="store_true", help="with --save-token and --json, print it too")

    command("whoami", _cmd_whoami, "print the account behind the token (never the token)", *with_token, as_json)
    command("ping", _cmd_ping, "keep the token alive; exit 3 if it is dead (prints nothing)", *with_token)
    command("sign-out", _cmd_sign_out, "revoke the token on plex.tv", *with_token)
    on_server = [server, token, connection, as_json]
    transient = command("transient-token", _cmd_transient_token, "print a transient token from the server",
                        *on_server)
    transient.add_argument("--type", default="delegation", choices=[m.value for m in GetTransientTokenQueryParamType])
    transient.add_argument("--scope", default="all", choices=[m.value for m in Scope])
    command("servers", _cmd_servers, "list the account's servers and their connections", *with_token, as_json)
    connecting = command("connect", _cmd_connect, "print the URL of the server's connection that works from here "
                         "(exit 6 when none does)", *with_token, as_json)
    connecting.add_argument("server_name", metavar="SERVER", help="the server's name or client identifier")
    command("home-users", _cmd_home_users, "list the Plex Home's users", *with_token, as_json)
    switching = command("switch", _cmd_switch, "print the token of a Plex Home user", *with_token, as_json)
    switching.add_argument("user", metavar="USER", help="the user's title, username or uuid")
    switching.add_argument("--pin-file", metavar="FILE", help="read the Home PIN from FILE (else PLEX_HOME_PIN, "
                           "else a prompt for a protected user)")
    for sub in (connecting, switching):
        sub.add_argument("--save-token", metavar="FILE", help="write the token to FILE (mode 0600)")
        sub.add_argument("--show-token", action="store_true", help="print the token too (switch: with --save-token "
                         "and --json)")
    info = command("source-info", _cmd_source_info, "print a source's name, identifier and connections", *on_server)
    info.add_argument("source", metavar="SOURCE", help="server://<machine identifier> or provider://<identifier>")
    info.add_argument("--refresh", action="store_true", help="ask the server to refresh the source")
    info.add_argument("--show-token", action="store_true", help="also print the source's access token")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Example::

        $ plexauth login
        $ plexauth whoami --json
    """
    argv = sys.argv[1:] if argv is None else argv
    for position, arg in enumerate(argv):
        option, given = arg.split("=", 1)[0], "=" in arg
        value_follows = position + 1 < len(argv) and not argv[position + 1].startswith("-")
        if option == "--token" or (option == "--password" and (given or value_follows)):
            # Refused before argparse, whose message would repeat the value.
            _say(f"error: {option} takes no value: a secret on the command line shows in ps; see "
                 f"--token-file, --password-file, --password-stdin and plexauth --help")
            return 2
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (2)
        return exc.code if isinstance(exc.code, int) else 2
    shared = {action.dest: action.option_strings[-1] for action in parser._actions if action.option_strings}
    unused = sorted(shared[dest] for dest in vars(args) if dest in shared and dest not in args.uses)
    if unused:
        _say(f"error: plexauth {args.command} does not use {', '.join(unused)}")
        return 2
    verbose = getattr(args, "verbose", False)
    args.json = getattr(args, "json", False)
    args.secrets = []  # what this run must never print: its token, password and code
    # Handlers on our loggers, not basicConfig: main() may run inside a bigger program.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in ("plexauth", "urllib3")] if verbose else []
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        result: int = args.run(args)
        return result
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        secrets = tuple(args.secrets)
        if verbose:
            import traceback  # noqa: PLC0415

            lines = _shown(traceback.format_exc().rstrip("\n"), secrets).split("\n")
            _emit(sys.stderr, "\n".join(_printable(line) for line in lines))
        code, text = _explained(exc, verbose)
        # What a server said may be in it: no terminal escapes, as in every line printed.
        _emit(sys.stderr, f"plexauth: error: {_printable(_shown(text, secrets))}")
        return code
    finally:
        for logger, level in zip(loggers, levels):
            logger.removeHandler(handler)
            logger.setLevel(level)


def _explained(exc: Exception, verbose: bool) -> tuple[int, str]:
    """The exit code and the one line that tell what went wrong."""
    if isinstance(exc, _Exit):
        return exc.code, str(exc)
    if isinstance(exc, _Unwritable):
        return 1, f"cannot write to standard output ({exc.strerror})"
    if isinstance(exc, PlexAuthError):
        return _exit_code(exc), str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name == "cryptography":
        return 1, str(exc)  # login --jwt, or renewing its token, without the extra
    # A bug, or something not foreseen: its text may hold anything, so only its kind.
    hint = "" if verbose else "; run again with -v to see where"
    return 1, f"unexpected {type(exc).__name__}{hint}"


if __name__ == "__main__":
    sys.exit(main())

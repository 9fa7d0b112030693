"""Tests for plexauth, against real HTTP servers on 127.0.0.1.

What the suite asserts
======================

Each item names the test in ``test_plexauth.py`` that asserts it, against real
servers on 127.0.0.1 (raw-socket servers with a scripted behaviour where
needed); ``test_readme__guarantees_name_real_tests`` fails if a name here is
not a test or a figure differs from the suite's. ``.ci/run`` runs them all on
urllib3 1.26 and 2.x.

- **Any answer**: for 1 000 generated answers per operation in CI (16 000 in
  all, for the 16 operations that talk HTTP; 150 per operation in a local
  run), an operation returns its model (``None`` for ``ping``, ``sign_out``
  and ``register_device_key``, a tuple for the lists) or raises a
  ``PlexAuthError``, and nothing else escapes. The answers vary the
  status (200-599), ``Content-Type``, ``Retry-After``, ``Location`` and
  ``Content-Encoding``, and the body: random JSON, right-shaped documents with
  one value of any type, every value ``null``, random XML, XML in UTF-16 or
  with odd declared encodings and entities, nesting 40, 1 000 or 100 000
  deep, numbers of 20 to 5 000 digits, invalid UTF-8, raw bytes, the
  secrets echoed in many forms, each possibly cut anywhere
  (``test_property__any_answer_gives_model_or_plexauth_error``); ``connect``
  given the same answers chooses the server only for its identity, else
  raises ``ServerUnreachableError``, and no probe carries a token
  (``test_property__connect_gives_the_server_or_unreachable``; its faults:
  ``test_connect__faults_are_reasons_of_unreachable``).
- **No answer for another request**: 16 threads × 40 calls, each with its own
  token, against a keep-alive server that mixes ``103``, ``100`` and ``102``
  interim answers, unasked extra answers, a 204 with a body, garbage and
  resets: no call returns another request's account, and the server
  answered each success to that very request
  (``test_hostile__no_answer_meant_for_another_request``); interim answers
  cost nothing on one keep-alive connection
  (``test_hostile__interim_answers_are_skipped``); a connection whose answer
  was not read to the end is not reused
  (``test_hostile__a_connection_goes_back_to_the_pool_only_when_read_to_the_end``).
- **Memory**: every operation against 25 hostile bodies (a 256 MiB gzip bomb,
  ``gzip, gzip``, a deflate bomb, half a million XML elements, a billion
  laughs in UTF-8 and UTF-16, ``encoding="rot13"``, ``"x-unknown"`` and
  ``"hex"``, 200 000-deep JSON, a body that never ends, a chunk of size
  ``-1``, 9 990 connections or services just under the caps...) runs in a process
  whose address space may grow by 64 MiB at most: only ``PlexAuthError``
  comes out, and nothing fails for memory
  (``test_hostile__bodies_cost_bounded_memory_and_raise_only_plexauth_errors``);
  each refusal gives its reason (``test_hostile__bodies_are_refused_with_their_reason``);
  chunk sizes are hex digits only (``test_hostile__chunk_sizes_are_hex_digits_only``);
  numbers past 64 bits are not taken (``test_hostile__numbers_beyond_64_bits_are_not_taken``);
  ``.errors`` keeps the first 16 entries (``test_hostile__errors_keep_their_first_entries``).
- **Time**: every operation ends within ``total_timeout`` (plus a generous
  1.5 s in the test) against trickled headers, a trickled body and endless
  ``100 Continue`` (``test_deadline__every_call_ends_within_total_timeout``),
  a fast answer that never ends (``test_deadline__a_fast_endless_answer_ends_by_the_time_bound_too``),
  a redirect chain whose hops stall, with retries
  (``test_deadline__stalling_redirect_chain_and_retries``), a TLS handshake
  trickled through a proxy (``test_deadline__trickled_tls_handshake``), a
  TLS handshake that never comes after a connect slowed by a full accept
  queue (``test_deadline__tls_handshake_gets_what_is_left_after_a_slow_connect``),
  an error body made to cost the masking most, sent just before the deadline
  (``test_deadline__masking_an_error_body_keeps_to_it_too``; what is left to
  mask past it is withheld: ``test_deadline__masking_past_it_withholds_what_is_left``); a
  ``Retry-After`` past the bound is not waited for
  (``test_deadline__retry_waits_count``); ``wait_for_pin(timeout=2)``
  against a trickling PIN check ends in ``PinExpiredError``
  (``test_deadline__trickling_pin_check_ends_within_the_wait``);
  ``connect(timeout=1)`` with every candidate stalled or hanging ends in time
  (``test_connect__ends_within_timeout_when_every_candidate_stalls``).
- **Secrets**: every exception the suite provokes goes through one checker
  (``raises``) that searches its ``str``, ``repr``, ``args``, fields,
  pickle, exception chain and traceback for the canary token, password,
  verification code and the server-made secrets, raw and with JSON, XML/HTML
  and percent escapes undone (alone and combined, up to six times), in
  UTF-16 read as text, and in base64 or hex (twice over); so does every
  generated error of the property test, and every log record, at DEBUG, of
  every test, urllib3's included (``_no_canary_in_logs``). That checker is
  shown to see every echo form (``test_secrets__the_checker_sees_every_form``).
  An error body that echoes the token, password and code in 26 forms, as
  JSON, XML, HTML or UTF-16, leaves no trace
  (``test_hostile__echoed_secrets_are_masked_in_every_form``), nor does a
  password beyond Latin-1 echoed in UTF-16
  (``test_hostile__utf16_echo_of_a_password_beyond_latin1_is_withheld``), nor
  one with a dotted capital I echoed in either case
  (``test_hostile__a_password_with_a_dotted_capital_i_is_masked_in_either_case``),
  nor one whose start the server made a token of
  (``test_hostile__a_token_that_starts_a_password_masks_none_of_it``); a
  repr masks the secrets of every model in it, a user's own models too
  (``test_hostile__a_repr_masks_the_secrets_of_every_model_in_it``), the
  models of one answer mask one another's, a token no use as one too
  (``test_hostile__the_models_of_one_answer_mask_one_anothers_secrets``), a
  number or list under a secret key too
  (``test_hostile__secret_keys_holding_numbers_or_lists_are_secrets_too``), in
  the forms repr writes (``test_hostile__secrets_are_masked_as_repr_writes_them``),
  and copies mask as their model
  (``test_hostile__copies_mask_as_the_model_they_copy``); so do ``connect``,
  which probes no URI holding any of them
  (``test_connect__another_servers_token_is_neither_probed_nor_shown``), and
  every command's output
  (``test_cli__output_masks_every_secret_of_the_answer``); what masking keeps
  stays bounded (``test_hostile__reprs_of_many_answers_keep_bounded_memory``); a
  text too long to look through is withheld
  (``test_hostile__a_text_too_long_to_look_through_is_withheld``), as is every
  repr of an answer with too many secrets to look for
  (``test_hostile__an_answer_with_too_many_secrets_to_look_for_is_withheld``) or
  with tokens made to nest deep
  (``test_hostile__tokens_made_to_nest_deep_withhold_every_text``); masking
  keeps to a budget of steps, withholding texts that would cost seconds each
  (``test_hostile__masking_keeps_each_text_to_a_budget``) and what is left of
  a command's result past its own
  (``test_hostile__masking_keeps_a_commands_result_to_a_budget``), as
  tokens that differ only in case cost it no more
  (``test_hostile__tokens_that_differ_only_in_case_cost_masking_no_more``) and
  comments that never close cost it no more either
  (``test_hostile__comments_that_never_close_cost_masking_no_more``), and shows a
  thousand servers whole within it
  (``test_hostile__a_large_account_is_shown_whole_within_the_budget``); nor do
  secrets in status lines and header lines
  (``test_hostile__secrets_in_status_and_header_lines_reach_no_log_and_no_exception``);
  a redirect to an address holding the token is not followed
  (``test_hostile__redirect_to_an_address_holding_a_secret_is_not_followed``);
  ``sign-in`` prints none of them, with and without ``-v``
  (``test_cli__sign_in_echoes_reach_no_output``).
- **Faults**, each ending in the documented exception: connection refused
  (``test_transport__connection_refused``); reset before the headers, a
  garbage status line, a ``Content-Length`` longer than the body, a stall
  (``test_transport__faults_become_transport_error``); reset mid-body
  (``test_transport__reset_mid_body``); a server that accepts and never
  answers (``test_transport__stall_ends_after_each_try_times_out``); a body
  that never ends: reading stops at 2 MiB with ``ResponseError``
  (``test_transport__endless_body_stops_at_the_cap``); a body that does not
  match its gzip encoding (``test_transport__broken_content_encoding``); 503
  and 429 with ``Retry-After`` in seconds and as an HTTP date, retried
  (``test_retries__retry_after_is_honoured``,
  ``test_retries__get_succeeds_after_503_and_429``); an absurd
  ``Retry-After``, not waited for
  (``test_retries__absurd_retry_after_is_not_waited_for``); redirect loops,
  non-HTTP and unparsable ``Location``
  (``test_redirects__not_followed_forever_or_elsewhere``,
  ``test_redirects__unparsable_location``).
- **No replay, no token elsewhere**, counted by the servers: the sign-in POST
  reaches the server once after a 503, a 307 and a reset
  (``test_post_users_sign_in_data__sent_once``,
  ``test_transport__get_retried_after_reset_but_sign_in_not``); a redirect
  to another port, another host name or to https arrives without
  ``X-Plex-Token`` (``test_secrets__redirect_to_other_port_drops_token``,
  ``test_secrets__redirect_to_other_host_drops_token``,
  ``test_secrets__redirect_to_https_drops_token``).
- **TLS**: a self-signed certificate is refused by default, a CA bundle in
  ``verify`` is accepted, ``verify=False`` works and warns
  (``test_tls__verified_by_default``, ``test_tls__custom_ca_bundle``,
  ``test_tls__verify_false_works_and_warns``).
- **Threads**: one ``Config`` shared by 8 threads × 200 calls: every answer is
  the right one and the server sees at most 8 connections, one pool of
  kept-alive connections (``test_threads__one_config_shared_by_8_threads``).
- **PIN sign-in**, against a test server that plays plex.tv: the JSON and
  the XML answer decode, and ``wait_for_pin`` returns at the first check after
  approval (``test_pin__created_pending_then_approved``); a 404 is
  ``PinExpiredError`` (``test_pin__expired_or_unknown_is_pin_expired_error``);
  at most one check per ``interval``
  (``test_wait_for_pin__at_most_one_check_per_interval``); the wait stops at
  the PIN's ``expires_at`` (``test_wait_for_pin__stops_at_the_pins_expiry``);
  a PIN for another client identifier or without a code is a
  ``ResponseError`` (``test_pin__answer_for_another_client_or_without_a_code_is_a_response_error``).
- **New tokens**: a sign-in answer with a token but a broken account (in
  bytes that are not even UTF-8) is a ``ResponseError`` whose token was
  revoked, counted by the server
  (``test_signin__a_token_in_an_answer_that_cannot_be_used_is_revoked``), or
  that says it could not be (``test_signin__a_token_that_cannot_be_revoked_is_said_so``);
  so is a token made of the password, code or token sent, in any case or
  form masking finds
  (``test_signin__a_new_token_that_holds_a_secret_of_the_request_is_refused``),
  or spelled with a ligature
  (``test_account__a_token_that_spells_the_token_used_with_a_ligature_is_refused``),
  as is a Home user's token that is the Home PIN, or the token used in other
  letters
  (``test_home_users__a_token_that_is_the_pin_or_the_token_used_in_another_case_is_refused``),
  and a transient token that is the token sent
  (``test_get_transient_token__the_token_sent_given_back_is_refused``),
  while the token used, given back as it is, is taken
  (``test_account__the_token_used_given_back_is_taken``);
  a token that cannot travel in a header is refused
  (``test_signin__a_token_that_cannot_travel_in_a_header_is_refused``).
- **More from the attack round**: unasked bytes waiting inside TLS
  (``test_hostile__unasked_bytes_inside_tls_are_not_read_as_the_next_answer``),
  a late body after a 204 or 304
  (``test_hostile__no_connection_is_reused_after_an_answer_that_has_no_body``),
  secrets split by XML comments or CDATA, in 8-digit character references,
  with tabs or newlines for spaces, in UTF-16 inside UTF-8, in base64 of
  the form or wrapped, in HTML references without ``;``, in mojibake
  (``test_hostile__secrets_that_masking_cannot_place_are_withheld``), a
  certificate whose common name is the token
  (``test_hostile__a_certificate_made_of_the_token_is_not_logged``),
  ``Retry-After`` dates no calendar has
  (``test_retries__retry_after_dates_no_calendar_has``), a million deflate
  streams (``test_deadline__many_compressed_members_are_refused_at_once``), a
  2 MiB username printed by ``whoami`` under a 64 MiB address-space limit
  (``test_cli__printing_a_huge_account_stays_within_64_mib``), ``-v``
  tracebacks (``test_cli__verbose_tracebacks_are_masked_too``).
- **Attack round 2**: error bodies made to cost time (unclosed CDATA, a key
  on every few bytes, escapes between literals) end in time
  (``test_deadline__error_bodies_made_to_cost_time_end_in_time``); secrets
  spelt as numbers, cut by the 300-character message limit, in Latin-1
  inside UTF-8, in hex, as ``\\x`` escapes or upper-cased are withheld
  (``test_hostile__secrets_as_numbers_cut_off_or_in_other_spellings``); a
  redirect holding the token in hex is not followed
  (``test_hostile__redirect_to_an_address_holding_the_token_in_hex_is_not_followed``);
  model reprs mask echoes (``test_models__reprs_mask_what_the_server_echoed``);
  a new token that cannot be printed is revoked
  (``test_cli__a_token_that_cannot_be_printed_is_revoked``), one that cannot
  be sent is said so (``test_signin__a_token_that_cannot_be_sent_is_said_so``).
- **Command line**: no traceback without ``-v``, for odd server strings
  (``test_cli__no_traceback_for_odd_server_strings``), odd PINs
  (``test_cli__link_refuses_odd_pins_without_a_traceback``) or anything
  unforeseen (``test_cli__unexpected_failures_are_one_line_without_v``); a
  new token that cannot be saved is revoked on plex.tv, not left working and
  lost (``test_cli__a_token_that_cannot_be_saved_is_revoked_not_lost``); a
  kept file that is a link, not a regular file, another user's, writable by
  others, or in a folder writable by others is refused with a message naming
  it (``test_cli__kept_files_that_are_not_private_are_refused``).
- **Coverage**: 100 % of the branches of ``plexauth.py`` (``fail_under = 100``
  in ``pyproject.toml``; only the ``__main__`` guard is excluded), with every
  test above, in ``.ci/run``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import datetime
import errno
import functools
import hashlib
import html
import http
import http.server
import inspect
import io
import itertools
import json
import logging
import math
import os
import pickle
import random
import re
import selectors
import shutil
import socket
import string
import subprocess
import sys
import textwrap
import threading
import time
import traceback
import tracemalloc
import types
import typing
import unicodedata
import urllib.parse
from typing import Any, Callable

import pytest
import urllib3
from pytest_httpserver import HTTPServer

import plexauth
from plexauth import (
    APIError,
    BadRequestError,
    Config,
    Pin,
    PinExpiredError,
    PlexAuthError,
    RateLimitedError,
    ResponseError,
    TransportError,
    TwoFactorRequiredError,
    UnauthorizedError,
)

# Canaries: none of these may ever show in a repr, str, log record or URL.
TOKEN = "CANARY-TOKEN-q8Zx3"
PASSWORD = "CANARY-PASS-&=?+ ü\"<%41"
CODE = "CANARY-CODE-4711"
AUTH_TOKEN = "CANARY-AUTH-TOKEN-p9"
TRANSIENT = "CANARY-TRANSIENT-k2"
ACCESS_TOKEN = "CANARY-ACCESS-TOKEN-w5"
SERVICE_TOKEN = "CANARY-SERVICE-TOKEN-r1"
SERVICE_SECRET = "CANARY-SERVICE-SECRET-t7"
PIN_TOKEN = "CANARY-PIN-TOKEN-m3"
# RFC 8037 appendix A: an Ed25519 key (its private part is a canary too) and its RFC 7638 thumbprint (A.3).
RFC_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC_KID = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
RFC_KEY = plexauth.DeviceKey(RFC_KID, {"kty": "OKP", "crv": "Ed25519", "x": RFC_X, "use": "sig", "alg": "EdDSA",
                                       "kid": RFC_KID}, RFC_D)
try:
    import cryptography  # noqa: F401 (the extra "jwt"; CI also runs the suite without it)
except ImportError:
    HAVE_CRYPTOGRAPHY = False
else:
    HAVE_CRYPTOGRAPHY = True
needs_cryptography = pytest.mark.skipif(not HAVE_CRYPTOGRAPHY, reason="needs the extra jwt (cryptography)")
CANARIES = (
    TOKEN, PASSWORD, CODE, AUTH_TOKEN, TRANSIENT, ACCESS_TOKEN, SERVICE_TOKEN, SERVICE_SECRET, PIN_TOKEN, "CANARY",
    RFC_D,
)

# A Home PIN is 4 digits: too short a canary for every output (a port or a time may hold
# it), so the tests of switch_home_user look for it where the PIN could leak.
HOME_PIN = "8362"
CLIENT_ID = "test-client-0001"
# plex.tv's answer to a sign-in that needs (or got a wrong) verification code.
TWO_FACTOR = {"errors": [{"code": 1029, "message": "Please enter the verification code"}]}


def echo_forms(secret: str) -> dict[str, str]:
    """``secret`` as a server might echo it."""
    raw = secret.encode()
    every_u = "".join(f"\\u{ord(c):04x}" for c in secret)
    return {
        "raw": secret,
        "json-ascii": json.dumps(secret)[1:-1],
        "json-every-char": every_u,
        "json-slash": json.dumps(secret)[1:-1].replace("-", "\\u002d").replace("/", "\\/"),
        "xml-named": html.escape(secret, quote=True).replace("&#x27;", "&apos;"),
        "xml-decimal": "".join(f"&#{ord(c)};" for c in secret),
        "xml-hex": "".join(f"&#x{ord(c):X};" for c in secret),
        "percent": urllib.parse.quote(secret, safe=""),
        "percent-plus": urllib.parse.quote_plus(secret),
        "percent-twice": urllib.parse.quote(urllib.parse.quote(secret, safe=""), safe=""),
        "percent-in-json": json.dumps(urllib.parse.quote(secret))[1:-1].replace("%", "\\u0025"),
        "base64": base64.b64encode(raw).decode(),
        "base64-offset-1": base64.b64encode(b"x" + raw).decode(),
        "base64-offset-2": base64.b64encode(b"xy" + raw + b"z").decode(),
        "base64-urlsafe": base64.urlsafe_b64encode(b"x" + raw).decode().rstrip("="),
        "mixed": secret[:3] + every_u[6 * 3: 6 * 6] + html.escape(secret[6:9]) + urllib.parse.quote(secret[9:]),
        "base64-wrapped": " \n".join(re.findall(".{1,4}", base64.b64encode(raw).decode().rstrip("="))),
        "base64-twice": base64.b64encode(base64.b64encode(b"x" + raw)).decode(),
        "hex": raw.hex().upper(),
        "hex-of-base64": base64.b64encode(raw).hex(),
        "base64-of-hex": base64.b64encode(b"xy" + raw.hex().encode()).decode(),
        "hex-of-utf-16": secret.encode("utf-16-le").hex(),
        "percent-5-times": functools.reduce(lambda text, _: urllib.parse.quote(text, safe=""), range(5), secret),
        # Every byte escaped, after 46 more: PASSWORD's "\u00fc" straddles the 64th escape.
        "percent-every-byte": "".join(f"%{byte:02X}" for byte in ("x" * 46 + secret).encode()),
        "base64-of-utf-16": base64.b64encode(secret.encode("utf-16-le")).decode(),
        "markup-comment": secret[:5] + "<!-- a > b -->" + secret[5:],
        "markup-unclosed-comment": secret[:5] + "<!-- a >" + secret[5:],  # no "-->": read as a tag
        "fullwidth": fullwidth(secret),
        # Characters that show nothing (zero-width space, soft hyphen, word joiner, byte-order mark) between.
        "invisible-split": "".join(char + "\u200b\u00ad\u2060\ufeff"[index % 4] for index, char in enumerate(secret)),
        "fullwidth-invisible": "\u200d".join(fullwidth(secret)),
        "markup-styled": "<!---->".join(char if not char.isascii() or not char.isalnum() else chr(
            (0x1D7CE - 48 if char.isdigit() else 0x1D400 - 65 if char.isupper() else 0x1D41A - 97) + ord(char))
            for char in secret),
        "other-digits": secret.translate(ARABIC_INDIC),
        "markup-escaped": secret[:5] + "&lt;wbr&gt;" + secret[5:],
        "hex-of-utf-16-be-after-word": "value " + secret.encode("utf-16-be").hex(),  # read from its "e" too
        # As a server that works in Latin-1 writes it (for an ASCII secret, as in UTF-8).
        "percent-latin-1": urllib.parse.quote(secret, safe="", encoding="latin-1", errors="replace"),
        "hex-latin-1": secret.encode("latin-1", "replace").hex(),
        "base64-latin-1": base64.b64encode(secret.encode("latin-1", "replace")).decode(),
        # Its UTF-8 read as Latin-1 (mojibake: "Ã¼" for "ü"), escaped, in base64, or twice over.
        "mojibake-percent": urllib.parse.quote(mojibake(secret), safe=""),
        "mojibake-base64": base64.b64encode(mojibake(secret).encode()).decode(),
        "mojibake-twice": mojibake(mojibake(secret)),
        # Markup that splits it: CDATA that was escaped, a tag as HTML5 reads it (with "<" inside).
        "markup-cdata-escaped": secret[:5] + "&lt;![CDATA[" + secret[5:9] + "]]&gt;" + secret[9:],
        "markup-html-tag": secret[:5] + "<b x=<>" + secret[5:],
    }


def mojibake(text: str) -> str:
    return text.encode().decode("latin-1")


def as_windows_1252(data: bytes) -> str:
    """``data`` read as a browser reads Windows-1252 (its undefined bytes as C1 controls)."""
    return "".join(bytes([byte]).decode("cp1252", "ignore") or chr(byte) for byte in data)


#: ASCII digits to Arabic-Indic ones, as a server of another locale may write them.
ARABIC_INDIC = {digit: 0x0660 + digit - 48 for digit in range(48, 58)}


def fullwidth(text: str) -> str:
    return "".join(chr(ord(char) + 0xFEE0) if "!" <= char <= "~" else char for char in text)


ACCOUNT = {
    "id": 13692262,
    "uuid": "dae343c1f45beb4f",
    "username": "Username",
    "title": "UsernameTitle",
    "email": "username@email.com",
    "friendlyName": "friendlyUsername",
    "authToken": AUTH_TOKEN,
    "joinedAt": 1556281940,
    "hasPassword": True,
    "twoFactorEnabled": False,
    "rememberExpiresAt": 1716281940,
    "locale": None,
    "country": "US",
    "thumb": "https://plex.tv/users/a4f43c1ebfde43a5/avatar?c=8372075101",
    "confirmed": True,
    "emailOnlyAuth": False,
    "experimentalFeatures": False,
    "guest": False,
    "home": True,
    "homeAdmin": True,
    "homeSize": 2,
    "maxHomeSize": 15,
    "protected": False,
    "restricted": False,
    "backupCodesCreated": False,
    "mailingListActive": False,
    "mailingListStatus": "a-status-added-tomorrow",
    "adsConsent": None,
    "scrobbleTypes": "",
    "pin": "CANARY-hashed-pin",
    "subscription": {
        "active": True,
        "subscribedAt": "2021-04-12T18:21:12Z",
        "status": "Active",
        "paymentService": "braintree",
        "plan": "lifetime",
        "features": ["webhooks", "a-feature-added-tomorrow"],
    },
    "subscriptions": [{"active": True, "status": "Active", "plan": "lifetime", "features": ["webhooks"]}],
    "profile": {
        "autoSelectAudio": True,
        "defaultAudioLanguage": "ja",
        "defaultSubtitleLanguage": "en",
        "autoSelectSubtitle": 1,
        "defaultSubtitleAccessibility": 0,
        "defaultSubtitleForced": 1,
        "watchedIndicator": 1,
        "mediaReviewsVisibility": 1,
    },
    "services": [
        {
            "identifier": "metadata-dev",
            "endpoint": "https://epg.provider.plex.tv",
            "token": SERVICE_TOKEN,
            "secret": SERVICE_SECRET,
            "status": "online",
        },
        {"identifier": "other", "endpoint": "https://x.plex.tv", "token": None, "secret": None, "status": "paused"},
    ],
    "roles": ["plexpass"],
    "entitlements": ["ios", "android"],
    "pastSubscriptions": [],
    "trials": [],
    "aFieldPlexAddsLater": {"nested": [1, 2, 3]},
}

ACCOUNT_XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<user id="13692262" uuid="dae343c1f45beb4f" username="Username" title="UsernameTitle"
  email="username@email.com" friendlyName="friendlyUsername" authToken="{AUTH_TOKEN}"
  joinedAt="1556281940" hasPassword="1" twoFactorEnabled="0" rememberExpiresAt="1716281940"
  country="US" thumb="https://plex.tv/users/a4f43c1ebfde43a5/avatar?c=8372075101" confirmed="true"
  emailOnlyAuth="0" experimentalFeatures="0" guest="0" home="1" homeAdmin="1" homeSize="2"
  maxHomeSize="15" protected="0" restricted="0" backupCodesCreated="0" mailingListActive="0"
  mailingListStatus="a-status-added-tomorrow" scrobbleTypes="" pin="CANARY-hashed-pin"
  aFieldPlexAddsLater="x">
  <subscription active="1" subscribedAt="2021-04-12T18:21:12Z" status="Active" paymentService="braintree"
    plan="lifetime">
    <features><feature id="webhooks"/><feature id="a-feature-added-tomorrow"/></features>
  </subscription>
  <profile autoSelectAudio="1" defaultAudioLanguage="ja" defaultSubtitleLanguage="en" autoSelectSubtitle="1"
    defaultSubtitleAccessibility="0" defaultSubtitleForced="1" watchedIndicator="1" mediaReviewsVisibility="1"/>
  <entitlements all="0"><entitlement id="ios"/><entitlement id="android"/></entitlements>
  <roles><role id="plexpass"/></roles>
  <services>
    <service identifier="metadata-dev" endpoint="https://epg.provider.plex.tv" token="{SERVICE_TOKEN}"
      secret="{SERVICE_SECRET}" status="online"/>
    <service identifier="other" endpoint="https://x.plex.tv" status="paused"/>
  </services>
  <subscriptions>
    <subscription active="1" status="Active" plan="lifetime">
      <features><feature id="webhooks"/></features>
    </subscription>
  </subscriptions>
  <pastSubscriptions/>
</user>
"""

# plex.tv's resources list (GET /api/v2/resources), as public clients' fixtures show it.
RESOURCES = [
    {
        "name": "Living Room", "product": "Plex Media Server", "productVersion": "1.40.1.8227", "platform": "Linux",
        "platformVersion": "6.1", "device": "PC", "clientIdentifier": "0123456789abcdef",
        "createdAt": "2019-04-26T12:32:20Z", "lastSeenAt": "2026-11-30T08:00:00Z", "provides": "server,sync",
        "ownerId": None, "sourceTitle": None, "publicAddress": "198.51.100.7", "accessToken": ACCESS_TOKEN,
        "owned": True, "home": False, "synced": False, "relay": True, "presence": True, "httpsRequired": True,
        "publicAddressMatches": True, "dnsRebindingProtection": False, "natLoopbackSupported": False,
        "connections": [
            {"protocol": "https", "address": "192.0.2.10", "port": 32400,
             "uri": "https://192-0-2-10.abc.plex.direct:32400", "local": True, "relay": False, "IPv6": False},
            {"protocol": "https", "address": "2001:db8::10", "port": 32400,
             "uri": "https://2001-db8--10.abc.plex.direct:32400", "local": False, "relay": False, "IPv6": True},
        ],
    },
    {"name": "Phone", "product": "Plex for Android", "clientIdentifier": "phone-1", "provides": "client,player",
     "ownerId": 99, "sourceTitle": "friend", "owned": False, "connections": []},
]
RESOURCES_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<resources size="2">'
    '<resource name="Living Room" product="Plex Media Server" productVersion="1.40.1.8227" platform="Linux" '
    'platformVersion="6.1" device="PC" clientIdentifier="0123456789abcdef" createdAt="2019-04-26T12:32:20Z" '
    'lastSeenAt="2026-11-30T08:00:00Z" provides="server,sync" publicAddress="198.51.100.7" '
    f'accessToken="{ACCESS_TOKEN}" owned="1" home="0" synced="0" relay="1" presence="1" httpsRequired="1" '
    'publicAddressMatches="1" dnsRebindingProtection="0" natLoopbackSupported="0"><connections>'
    '<connection protocol="https" address="192.0.2.10" port="32400" uri="https://192-0-2-10.abc.plex.direct:32400" '
    'local="1" relay="0" IPv6="0"/>'
    '<connection protocol="https" address="2001:db8::10" port="32400" '
    'uri="https://2001-db8--10.abc.plex.direct:32400" local="0" relay="0" IPv6="1"/>'
    '</connections></resource>'
    '<resource name="Phone" product="Plex for Android" clientIdentifier="phone-1" provides="client,player" '
    'ownerId="99" sourceTitle="friend" owned="0"><connections/></resource></resources>'
)
HOME_USERS = {
    "id": 1, "name": "Home", "users": [
        {"id": 1, "uuid": "owner-uuid-0001", "title": "Owner", "username": "owner", "email": "owner@example.com",
         "friendlyName": "", "thumb": "https://plex.tv/users/owner/avatar", "admin": True, "guest": False,
         "restricted": False, "protected": True},
        {"id": 2, "uuid": "kid-uuid-0001", "title": "Kid", "username": "", "email": None, "admin": False,
         "guest": False, "restricted": True, "protected": True},
    ],
}

SOURCE = {
    "MediaContainer": {
        "size": 1,
        "Device": {
            "name": "Living Room",
            "clientIdentifier": "0123456789abcdef",
            "accessToken": ACCESS_TOKEN,
            "Connection": [
                {
                    "protocol": "https",
                    "address": "192.0.2.10",
                    "port": 32400,
                    "uri": "https://192-0-2-10.abc.plex.direct:32400",
                    "local": True,
                    "relay": False,
                },
                {
                    "protocol": "https",
                    "address": "198.51.100.7",
                    "port": 8443,
                    "uri": "https://198-51-100-7.abc.plex.direct:8443",
                    "local": False,
                    "relay": True,
                },
            ],
        },
    }
}

SOURCE_XML = f"""<?xml version="1.0" encoding="UTF-8"?>
<MediaContainer size="1">
  <Device name="Living Room" clientIdentifier="0123456789abcdef" accessToken="{ACCESS_TOKEN}">
    <Connection protocol="https" address="192.0.2.10" port="32400"
      uri="https://192-0-2-10.abc.plex.direct:32400" local="1" relay="0"/>
    <Connection protocol="https" address="198.51.100.7" port="8443"
      uri="https://198-51-100-7.abc.plex.direct:8443" local="0" relay="1"/>
  </Device>
</MediaContainer>
"""


@pytest.fixture(scope="session")
def httpserver_listen_address() -> tuple[str, int]:
    return ("127.0.0.1", 0)


@pytest.fixture
def config(httpserver: HTTPServer) -> Config:
    return Config(
        client_identifier=CLIENT_ID,
        token=TOKEN,
        server_url=httpserver.url_for(""),
        plex_tv_url=httpserver.url_for("/api/v2"),
        clients_url=httpserver.url_for("/api/v2"),  # the JWT operations' paths stand beside plex.tv's
        retries=2,
        timeout=5.0,
    )


@pytest.fixture(params=[(json.dumps(ACCOUNT), "application/json"), (ACCOUNT_XML, "text/xml")], ids=["json", "xml"])
def account_body(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The same account, as plex.tv sends it in JSON and in XML: (body, content type)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def other_server():
    server = HTTPServer(host="127.0.0.1", port=0)
    server.start()
    yield server
    server.clear()
    server.stop()


@pytest.fixture(autouse=True)
def _no_canary_in_logs(caplog: pytest.LogCaptureFixture):
    """Every test runs with DEBUG logging captured (ours, urllib3's and the test
    servers'); no record may hold a secret."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.records:
        assert_no_secret(record.getMessage())


def assert_no_secret(text: str, canaries: tuple[str, ...] = CANARIES, depth: int = 2) -> None:
    """No canary in ``text``, in any form a server could echo it: raw; with
    JSON, XML/HTML and percent escapes undone, several times over; with markup,
    NULs or whitespace between its characters; decoded with the wrong charset
    (UTF-16 bytes read as UTF-8, UTF-8 as Latin-1); in base64 (wrapped or not,
    a last partial group too) or hex of any of these, ``depth`` times over.
    Worked out here, independently of the module's own masking."""
    # Whitespace and NULs taken out of each view (which finds the raw canary
    # too), the views joined by a character no canary holds.
    packed = "\x01".join("".join(view.replace("\x00", "").split())
                          for view in secret_views(text, wrong_charsets=depth == 2))
    lowered = packed.lower()
    for canary in canaries:
        for spelled in spellings(canary):
            assert "".join(spelled.split()) not in packed
        for data in encodings(canary):
            assert data.hex() not in lowered
    runs = set(re.findall(r"[A-Za-z0-9+/_-]{8,}={0,2}", packed))
    runs.update(re.findall(r"[0-9a-fA-F]{8,}", packed))  # hex inside a longer run of letters
    if depth == 0:
        return
    readings = []
    for run in runs:
        for data in decodings(run):
            for form in (data, urllib.parse.unquote_to_bytes(data.replace(b"+", b" "))):
                assert not encoded_canaries(canaries).search(form)
            readings += [data.decode(encoding, "ignore") for encoding in ("utf-8", "utf-16-le", "utf-16-be")]
    if readings:
        assert_no_secret("\n".join(dict.fromkeys(readings)), canaries, depth - 1)


@functools.lru_cache(maxsize=None)
def spellings(canary: str) -> tuple[str, ...]:
    """``canary``, and its UTF-8 read as Latin-1 or Windows-1252, once and twice over."""
    once = [mojibake(canary), as_windows_1252(canary.encode())]
    return tuple(dict.fromkeys([canary, *once, *(misread for text in once
                                                  for misread in (mojibake(text), as_windows_1252(text.encode())))]))


@functools.lru_cache(maxsize=None)
def encodings(canary: str) -> list[bytes]:
    """``canary`` in UTF-8, in Latin-1 and Windows-1252 when it can be, and each of its spellings in UTF-8."""
    found = [spelled.encode() for spelled in spellings(canary)]
    for codec in ("latin-1", "cp1252"):
        with contextlib.suppress(UnicodeEncodeError):
            found.append(canary.encode(codec))
    return list(dict.fromkeys(found))


@functools.lru_cache(maxsize=None)
def encoded_canaries(canaries: tuple[str, ...]) -> re.Pattern[bytes]:
    return re.compile(b"|".join(re.escape(data) for canary in canaries for data in encodings(canary)))


# What readable() drops (format characters, marks that stand alone) or makes ASCII (any script's digits).
UNSEEN = {code: None for code in range(sys.maxunicode + 1) if unicodedata.category(chr(code)) in ("Cf", "Mn")}
UNSEEN.update((code, str(unicodedata.decimal(chr(code)))) for code in range(sys.maxunicode + 1)
              if unicodedata.category(chr(code)) == "Nd")


def decodings(run: str) -> list[bytes]:
    """What ``run`` may say in base64 (from each of its first four characters,
    either alphabet, a last partial group too) or in hex."""
    found = []
    for start in range(4):  # the run may begin inside another word
        chunk = run[start:].rstrip("=")
        chunk = chunk[: len(chunk) - (len(chunk) % 4 == 1)]
        for alphabet in (b"+/", b"-_"):
            try:
                found.append(base64.b64decode(chunk + "=" * (-len(chunk) % 4), altchars=alphabet, validate=False))
            except ValueError:  # characters of the other alphabet, dropped, broke the length
                continue
    for start in range(2):
        chunk = run[start:]
        chunk = chunk[: len(chunk) // 2 * 2]
        if re.fullmatch("[0-9a-fA-F]*", chunk):
            found.append(bytes.fromhex(chunk))
    return found


def _json_unescaped(text: str) -> str:
    def pair(m: Any) -> str:
        return (chr(int(m[1], 16)) + chr(int(m[2], 16))).encode("utf-16", "surrogatepass").decode("utf-16")

    pairs = re.sub(r"\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})", pair, text, flags=re.IGNORECASE)
    return re.sub(r"\\u([0-9a-fA-F]{4})|\\(.)",
                  lambda m: chr(int(m[1], 16)) if m[1] else {"n": "\n", "t": "\t"}.get(m[2], m[2]), pairs)


def uncommented(text: str) -> str:
    """``text`` without its XML comments, read once (a lazy ``<!--.*?-->``
    reads on to the end from every ``<!--`` that does not close)."""
    kept, at = [], 0
    while True:
        start = text.find("<!--", at)
        end = text.find("-->", start + 4) if start >= 0 else -1
        if end < 0:
            return "".join(kept) + text[at:]
        kept.append(text[at:start])
        at = end + 3


def html_untagged(text: str) -> str:
    """``text`` without each ``<`` up to the next ``>`` (as HTML5 reads ``<a<b>``),
    read once (``<[^>]*>`` reads on to the end from every ``<`` that none follows)."""
    kept, at = [], 0
    while True:
        start = text.find("<", at)
        end = text.find(">", start) if start >= 0 else -1
        if end < 0:
            return "".join(kept) + text[at:]
        kept.append(text[at:start])
        at = end + 1


def readable(text: str) -> str:
    """``text`` as a reader sees it: NFKC-normalised (fullwidth and styled
    letters as plain ones), without what shows nothing (format characters and
    marks that stand alone), digits of any script as ASCII ones."""
    if text.isascii():  # (most texts: reads as it is)
        return text
    return unicodedata.normalize("NFKC", text).translate(UNSEEN)


def secret_views(text: str, wrong_charsets: bool = True) -> set[str]:
    """``text`` as readers might see it, each with escapes undone up to six times."""
    untagged = re.sub(r"<!\[CDATA\[|\]\]>|<[^<>]*>", "", uncommented(text))
    misread = text.encode("latin-1", "ignore").decode("utf-8", "ignore")
    views = set()
    for start in {text, untagged, text.replace("\x00", ""), misread, readable(text), readable(untagged),
                  html_untagged(uncommented(text))}:
        view = start
        for _ in range(6):
            views.add(view)
            if re.search("%[89a-fA-F]", view):
                views.add(urllib.parse.unquote_plus(view, encoding="latin-1"))  # percent-encoded from Latin-1
            if "<" in view:  # markup that was escaped, and tags as HTML5 reads them ("<a<b>")
                views.add(re.sub(r"<!\[CDATA\[|\]\]>|<[^<>]*>", "", uncommented(view)))
                views.add(html_untagged(uncommented(view.replace("<![CDATA[", "").replace("]]>", ""))))
            view = urllib.parse.unquote_plus(_json_unescaped(html.unescape(view)))
        views.add(view)
    if wrong_charsets:  # UTF-16 bytes that were read as UTF-8 or Latin-1
        as_bytes = {text.encode("utf-8", "surrogatepass"), text.encode("latin-1", "ignore")}
        views.update(data[start:].decode(encoding, "ignore")
                     for data in as_bytes for encoding in ("utf-16-le", "utf-16-be") for start in range(2))
    return views


@contextlib.contextmanager
def raises(expected: Any, match: str | None = None) -> Any:
    """``pytest.raises`` that also sweeps what was raised for secrets: every
    exception the suite provokes passes through here."""
    with pytest.raises(expected, match=match) as info:
        yield info
    sweep(info.value)


def sweep(exc: BaseException, canaries: tuple[str, ...] = CANARIES) -> None:
    """No secret in the exception's text, repr, args, fields, pickle, chain or traceback."""
    texts = [str(exc), repr(exc), repr(exc.args), repr(vars(exc)), pickle.dumps(exc).decode("utf-8", "replace"),
             "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))]
    if isinstance(exc, APIError):
        texts += [repr(exc.errors), exc.body.decode("utf-8", "replace")]
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        texts += [str(seen), repr(seen), repr(vars(seen))]
        seen = seen.__cause__ or seen.__context__
    for text in texts:
        assert_no_secret(text, canaries)


def requests_seen(server: HTTPServer) -> list[Any]:
    return [request for request, _response in server.log]


class Op:
    """One public operation, called with fixed arguments, and where it goes."""

    def __init__(self, name: str, method: str, path: str, call: Callable[[Config], Any]) -> None:
        self.name = name
        self.method = method
        self.path = path
        self.call = call

    def __repr__(self) -> str:
        return self.name


OPS = [
    Op("transient", "GET", "/security/token", plexauth.get_transient_token),
    Op("source", "GET", "/security/resources", lambda c: plexauth.get_source_connection_information(c, "server://x")),
    Op("details", "GET", "/api/v2/user", plexauth.get_token_details),
    Op(
        "signin",
        "POST",
        "/api/v2/users/signin",
        lambda c: plexauth.post_users_sign_in_data(c, "me@example.com", PASSWORD, verification_code=CODE),
    ),
    Op("pin-create", "POST", "/api/v2/pins", plexauth.create_pin),
    Op("pin-check", "GET", "/api/v2/pins/7", lambda c: plexauth.check_pin(c, Pin(id=7, code="ABCD"))),
    Op("ping", "GET", "/api/v2/ping", plexauth.ping),
    Op("signout", "DELETE", "/api/v2/users/signout", plexauth.sign_out),
    Op("resources", "GET", "/api/v2/resources", plexauth.get_resources),
    Op("home-users", "GET", "/api/v2/home/users", plexauth.get_home_users),
    Op("switch", "POST", "/api/v2/home/users/kid-uuid-0001/switch",
       lambda c: plexauth.switch_home_user(c, plexauth.HomeUser(id=2, uuid="kid-uuid-0001"), pin=HOME_PIN)),
    # JWT sign-in (the tests' clients_url is plex_tv_url); these two sign nothing.
    Op("jwk", "POST", "/api/v2/auth/jwk", lambda c: plexauth.register_device_key(c, RFC_KEY)),
    Op("jwt-pin-create", "POST", "/api/v2/pins", lambda c: plexauth.create_pin(c, key=RFC_KEY)),
]


def verify_op(config: Config) -> Any:
    plexauth._jwt_keys.clear()  # the keys plex.tv gave are kept: asked for again here, as each op asks
    return plexauth.verify_jwt(config, op_jwt())


# These sign or verify: without cryptography they are left out (and tested for their ModuleNotFoundError).
SIGNING_OPS = [
    Op("jwt", "GET", "/api/v2/auth/nonce", lambda c: plexauth.get_jwt(c, RFC_KEY)),  # the nonce first
    Op("jwt-keys", "GET", "/api/v2/auth/keys", verify_op),
    Op("jwt-pin-check", "GET", "/api/v2/pins/7", lambda c: plexauth.check_pin(c, Pin(id=7, code="ABCD"), key=RFC_KEY)),
]
if HAVE_CRYPTOGRAPHY:
    OPS += SIGNING_OPS
# Their 2xx status is the whole answer: the body is not read.
STATUS_ONLY = ["ping", "signout", "jwk"]
PMS_OPS = [op for op in OPS if not op.path.startswith("/api/v2")]
PLEX_TV_OPS = [op for op in OPS if op.path.startswith("/api/v2")]
GET_OPS = [op for op in OPS if op.method == "GET"]


def expect(server: HTTPServer, op: Op) -> Any:
    return server.expect_request(op.path, method=op.method)




def check_account(account: plexauth.UserPlexAccount) -> None:
    assert account.id == 13692262
    assert account.uuid == "dae343c1f45beb4f"
    assert account.username == "Username"
    assert account.title == "UsernameTitle"
    assert account.email == "username@email.com"
    assert account.friendly_name == "friendlyUsername"
    assert account.auth_token == AUTH_TOKEN
    assert account.joined_at == datetime.datetime(2019, 4, 26, 12, 32, 20, tzinfo=datetime.timezone.utc)
    assert account.remember_expires_at == datetime.datetime.fromtimestamp(1716281940, datetime.timezone.utc)
    assert account.has_password is True
    assert account.two_factor_enabled is False
    assert account.home_size == 2
    assert account.mailing_list_status == "a-status-added-tomorrow"
    assert account.locale is None
    assert account.subscription == plexauth.Subscription(
        active=True,
        subscribed_at="2021-04-12T18:21:12Z",
        status="Active",
        payment_service="braintree",
        plan="lifetime",
        features=("webhooks", "a-feature-added-tomorrow"),
    )
    assert account.subscriptions == (
        plexauth.Subscription(active=True, status="Active", plan="lifetime", features=("webhooks",)),
    )
    assert account.profile is not None
    assert account.profile.auto_select_audio is True
    assert account.profile.default_audio_language == "ja"
    assert account.profile.auto_select_subtitle == 1
    assert account.profile.watched_indicator == 1
    assert [s.identifier for s in account.services] == ["metadata-dev", "other"]
    assert account.services[0].token == SERVICE_TOKEN
    assert account.services[0].secret == SERVICE_SECRET
    assert account.services[1].token is None
    assert account.services[1].status == "paused"
    assert account.roles == ("plexpass",)
    assert account.entitlements == ("ios", "android")
    assert "aFieldPlexAddsLater" in account.raw
    text = repr(account)
    assert "auth_token='***'" in text
    assert_no_secret(text)
    assert_no_secret(str(account))




class FakePlexTV:
    """Plays plex.tv's PIN, account, ping and sign-out endpoints on the test server.

    A PIN answers pending (no token) to its first ``pending`` checks, then
    with PIN_TOKEN (``pending=None``: never approved); plex.tv forgets it
    (404) after ``lifetime`` seconds, when ``gone``, or when another client
    identifier asks.  Every check is counted here, on the server side, and
    ``used`` lists (token, client identifier) of each request that sent a token.
    """

    def __init__(self, server: HTTPServer, *, pending: int | None = 2, lifetime: float = 1800.0,
                 xml: bool = False, gone: bool = False) -> None:
        self.pending, self.lifetime, self.xml, self.gone = pending, lifetime, xml, gone
        self.pins: dict[int, tuple[str, bool, datetime.datetime]] = {}
        self.checks = 0
        self.tokens = {TOKEN}
        self.used: list[tuple[str, str]] = []
        self.failing: set[str] = set()  # tokens whose requests plex.tv answers 503
        server.expect_request(re.compile(r"/api/v2/(pins.*|ping|users/signout|user)$")).respond_with_handler(self.handle)

    def handle(self, request: Any) -> Any:
        from werkzeug import Response

        client = request.headers.get("X-Plex-Client-Identifier")
        now = datetime.datetime.now(datetime.timezone.utc)
        if request.path == "/api/v2/pins" and request.method == "POST":
            pin_id = 1000 + len(self.pins)
            self.pins[pin_id] = (client, request.args.get("strong") == "true", now)
            return self.pin(pin_id, None, 201)
        match = re.fullmatch(r"/api/v2/pins/(\d+)", request.path)
        if match and request.method == "GET":
            self.checks += 1
            pin_id = int(match[1])
            made = self.pins.get(pin_id)
            if self.gone or made is None or made[0] != client or (now - made[2]).total_seconds() > self.lifetime:
                body = {"errors": [{"code": 1020, "message": "Code not found or expired", "status": 404}]}
                return Response(json.dumps(body), status=404, content_type="application/json")
            approved = self.pending is not None and self.checks > self.pending
            if approved:
                self.tokens.add(PIN_TOKEN)
            return self.pin(pin_id, PIN_TOKEN if approved else None, 200)
        token = request.headers.get("X-Plex-Token")
        self.used.append((token, client))
        if token in self.failing:
            return Response("", status=503)
        if token not in self.tokens:
            body = {"errors": [{"code": 1001, "message": "User could not be authenticated", "status": 401}]}
            return Response(json.dumps(body), status=401, content_type="application/json")
        if request.path == "/api/v2/ping" and request.method == "GET":
            return Response("<?xml version='1.0'?><pong>true</pong>", status=200, content_type="text/xml")
        if request.path == "/api/v2/user" and request.method == "GET":
            return Response(json.dumps(ACCOUNT), status=200, content_type="application/json")
        assert (request.path, request.method) == ("/api/v2/users/signout", "DELETE")
        self.tokens.discard(token)
        return Response(status=204)

    def pin(self, pin_id: int, token: str | None, status: int) -> Any:
        from werkzeug import Response

        client, strong, made = self.pins[pin_id]
        code = "pj6rvq4k3lns1bcxfa2x0m9ye" if strong else "A1B2"
        expires = (made + datetime.timedelta(seconds=self.lifetime)).isoformat(timespec="milliseconds")
        doc = {
            "id": pin_id, "code": code, "product": "plexauth", "trusted": False, "qr": f"https://plex.tv/api/v2/pins/qr/{code}",
            "clientIdentifier": client, "location": {"code": "XX", "country": "Nowhere"},
            "expiresIn": int(self.lifetime), "createdAt": made.isoformat().replace("+00:00", "Z"),
            "expiresAt": expires.replace("+00:00", "Z"), "authToken": token, "newRegistration": None,
        }
        if not self.xml:
            return Response(json.dumps(doc), status=status, content_type="application/json")
        attrs = " ".join(
            f'{key}="{"" if value is None else str(value).lower() if isinstance(value, bool) else value}"'
            for key, value in doc.items() if key != "location"
        )
        body = f'<?xml version="1.0" encoding="UTF-8"?>\n<pin {attrs}><location code="XX" country="Nowhere"/></pin>'
        return Response(body, status=status, content_type="application/xml")



PLEX_TV_ERRORS = [
    (400, b'{"errors":[{"code":1000,"message":"X-Plex-Client-Identifier is missing","status":400}]}',
     BadRequestError, 1000, "X-Plex-Client-Identifier is missing"),
    (400, b'<errors><error code="1000" message="X-Plex-Client-Identifier is missing" status="400"/></errors>',
     BadRequestError, 1000, "X-Plex-Client-Identifier is missing"),
    (401, b'{"errors":[{"code":1001,"message":"User could not be authenticated","status":401}]}',
     UnauthorizedError, 1001, "User could not be authenticated"),
    (401, b'<?xml version="1.0"?><errors><error code="1001" message="User could not be authenticated" '
          b'status="401"/></errors>', UnauthorizedError, 1001, "User could not be authenticated"),
    (401, b'{"errors":[{"code":1029,"message":"Please enter the verification code","status":401}]}',
     TwoFactorRequiredError, 1029, "Please enter the verification code"),
    (401, b'<errors><error code="1029" message="Please enter the verification code" status="401"/></errors>',
     TwoFactorRequiredError, 1029, "Please enter the verification code"),
    (401, b'{"errors":[{"code":1031,"message":"This IP is locked out","status":401}]}',
     UnauthorizedError, 1031, "This IP is locked out"),
    (401, b"<errors><error>Invalid email, username, or password.</error></errors>",
     UnauthorizedError, None, "Invalid email, username, or password."),
    (422, b'{"error":"Invalid token"}', UnauthorizedError, None, "Invalid token"),
    (422, b'{"error":"Unprocessable"}', APIError, None, "Unprocessable"),
    (403, b'{"errors":[{"code":1004,"message":"Forbidden\\n  here","status":403}]}', APIError, 1004, "Forbidden here"),
    (500, b'{"errors":[{"code":"oops","message":42}]}', APIError, None, None),
    (500, b"{\"errors\": \"", APIError, None, None),
    (500, b"[1, 2]", APIError, None, None),
    (409, b"<html><body>conflict</body></html>", APIError, None, None),
]


def plex_tv_error_id(case: Any) -> str:
    return f"{case[0]}-{case[2].__name__}-{'xml' if case[1].lstrip().startswith(b'<') else 'json'}"




class FaultServer:
    """A TCP server on 127.0.0.1 whose connections each get ``handle(conn, done)``
    in their own thread.  ``close()`` accepts (and counts) every connection
    already made before it stops, so ``connections`` is exact after it."""

    def __init__(self, handle: Callable[[socket.socket, threading.Event], None]) -> None:
        self.handle = handle
        self.done = threading.Event()
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.wake_r, self.wake_w = socket.socketpair()
        self.handlers: list[threading.Thread] = []
        self.accepted: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self.listener, selectors.EVENT_READ)
            selector.register(self.wake_r, selectors.EVENT_READ)
            while True:
                ready = {key.fileobj for key, _ in selector.select()}
                if self.listener not in ready:  # woken, and no connection is waiting
                    return
                try:
                    conn, _ = self.listener.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(True)
                self.connections += 1
                self.accepted.append(conn)
                thread = threading.Thread(target=self.run, args=(conn,), daemon=True)
                self.handlers.append(thread)
                thread.start()

    def run(self, conn: socket.socket) -> None:
        # OSError: the client went away, which is what some tests do.
        with conn, contextlib.suppress(OSError):
            self.handle(conn, self.done)

    def close(self) -> None:
        if self.done.is_set():
            return
        self.done.set()
        self.wake_w.send(b"x")
        self.thread.join(timeout=10)
        for conn in self.accepted:  # a handler waiting for a keep-alive client's next request ends now
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self.handlers:
            thread.join(timeout=10)
        for sock in (self.listener, self.wake_r, self.wake_w):
            sock.close()
        assert not self.thread.is_alive()
        assert not any(thread.is_alive() for thread in self.handlers)


def read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def reset(conn: socket.socket, done: threading.Event) -> None:
    read_request(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def silent(conn: socket.socket, done: threading.Event) -> None:
    read_request(conn)
    done.wait(30)


def answer(raw: bytes) -> Callable[[socket.socket, threading.Event], None]:
    def handle(conn: socket.socket, done: threading.Event) -> None:
        read_request(conn)
        conn.sendall(raw)

    return handle


garbage = answer(b"HELLO THERE\r\n\r\n")
short_body = answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nContent-Type: application/json\r\n\r\n{\"Media")


@pytest.fixture
def token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line finds the canary token in PLEX_TOKEN."""
    monkeypatch.setenv("PLEX_TOKEN", TOKEN)


@pytest.fixture
def fault_server():
    servers: list[FaultServer] = []

    def start(handle: Callable[[socket.socket, threading.Event], None]) -> FaultServer:
        server = FaultServer(handle)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def fault_config(port: int, retries: int = 0) -> Config:
    url = f"http://127.0.0.1:{port}"
    return Config(CLIENT_ID, token=TOKEN, server_url=url, plex_tv_url=url + "/api/v2", clients_url=url + "/api/v2",
                  timeout=0.5, retries=retries)


def reset_mid_body(conn: socket.socket, done: threading.Event) -> None:
    # Linux hands the client the bytes already received before the reset.
    read_request(conn)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"Media")
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


class CountingServer(http.server.ThreadingHTTPServer):
    """A keep-alive HTTP/1.1 server that counts the connections made to it and
    answers ``/security/resources`` with a device named after ``source``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), EchoSource)
        self.connections = 0
        self.requests = 0
        self.lock = threading.Lock()


class EchoSource(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes
    server: CountingServer

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        source = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)["source"][0]
        device = {"name": source, "accessToken": ACCESS_TOKEN, "Connection": [{"uri": "http://192.0.2.1:32400"}]}
        body = json.dumps({"MediaContainer": {"size": 1, "Device": [device]}}).encode()
        with self.server.lock:
            self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


THREADS, CALLS_PER_THREAD = 8, 200




def tls_certificate(folder: Any, name: str = "127.0.0.1", **issue: Any) -> tuple[Any, str]:
    """A server's TLS context with a certificate for ``name`` from a new trustme CA, and the
    path of that CA's bundle in ``folder`` (for ``Config.verify``).  trustme needs
    cryptography, which the CI run without the extra lacks: there the test skips."""
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name, **issue).configure_cert(context)
    bundle = os.path.join(str(folder), "ca.pem")
    ca.cert_pem.write_to_path(bundle)
    return context, bundle


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory):
    context, bundle = tls_certificate(tmp_path_factory.mktemp("tls"))
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.expect_request("/security/token").respond_with_json({"MediaContainer": {"token": TRANSIENT}})
    server.start()
    yield server, bundle
    server.stop()


def tls_config(server: HTTPServer, **kwargs: Any) -> Config:
    return Config(CLIENT_ID, token=TOKEN, server_url=server.url_for(""), retries=0, **kwargs)



from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# CI may raise the count with HYPOTHESIS_PROFILE=ci; the default keeps the suite quick.
settings.register_profile("default", max_examples=150, deadline=None)
settings.register_profile("ci", max_examples=1000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

WIRE_KEYS = [
    "MediaContainer", "token", "Device", "Connection", "name", "clientIdentifier", "accessToken", "uri", "port",
    "local", "id", "uuid", "username", "authToken", "joinedAt", "subscription", "features", "services", "profile",
    "roles", "entitlements", "errors", "error", "code", "message", "status", "user", "pin", "expiresAt",
]
# The request's own secrets, which a server may echo anywhere.
# The request's own secrets, which a server may echo anywhere, in any form.
ECHOES = [form for secret in (TOKEN, PASSWORD, CODE) for form in echo_forms(secret).values()]
texts = st.text(max_size=8) | st.sampled_from(ECHOES)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(WIRE_KEYS) | st.text(max_size=4),
                                                                  inner, max_size=5),
    max_leaves=25,
)


def nulled(doc: Any) -> Any:
    """``doc`` with every value, at every depth, replaced by null."""
    if isinstance(doc, dict):
        return {key: nulled(value) for key, value in doc.items()}
    if isinstance(doc, list):
        return [nulled(value) for value in doc]
    return None


def xml_element(draw: Any, depth: int = 0) -> str:
    from xml.sax.saxutils import quoteattr

    tag = draw(st.sampled_from([*WIRE_KEYS, "features", "feature", "service"]))
    attrs = draw(st.dictionaries(st.sampled_from(WIRE_KEYS), texts, max_size=4))
    text = "".join(f" {key}={quoteattr(value)}" for key, value in attrs.items())
    children = [xml_element(draw, depth + 1) for _ in range(draw(st.integers(0, 3 if depth < 3 else 0)))]
    return f"<{tag}{text}>{''.join(children)}</{tag}>"


PIN_DOC = {"id": 7, "code": "ABCD", "clientIdentifier": CLIENT_ID, "expiresAt": "2026-10-01T23:09:52Z",
           "authToken": PIN_TOKEN}
KNOWN = [
    ACCOUNT, SOURCE, PIN_DOC, {"MediaContainer": {"token": "t"}}, {"errors": [{"code": 1029, "message": "m"}]}
]


@st.composite
def bodies(draw: Any) -> bytes:
    kind = draw(st.sampled_from(["json", "known", "nulls", "xml", "deep", "huge", "bad-utf8", "bytes", "encoded"]))
    if kind == "json":
        body = json.dumps(draw(json_values)).encode()
    elif kind == "known":  # a right-shaped document with one value of any type
        doc = draw(st.sampled_from(KNOWN))
        doc = {**doc, draw(st.sampled_from(list(doc))): draw(json_values)}
        body = json.dumps(doc).encode()
    elif kind == "nulls":
        body = json.dumps(nulled(draw(st.sampled_from(KNOWN)))).encode()
    elif kind == "xml":
        body = xml_element(draw).encode()
    elif kind == "deep":
        depth = draw(st.sampled_from([40, 1000, 100_000]))
        open_, close = draw(st.sampled_from([("[", "]"), ('{"user":', "}"), ("<user>", "</user>")]))
        body = (open_ * depth + close * depth).encode()
    elif kind == "huge":  # beyond int and float, and past CPython's 4300-digit limit
        digits = "9" * draw(st.sampled_from([20, 400, 5000]))
        body = json.dumps({**ACCOUNT, draw(st.sampled_from(["id", "joinedAt", "homeSize"])): 0}).encode()
        body = body.replace(b": 0", f": {digits}".encode(), 1) if draw(st.booleans()) else body.replace(
            b": 0", f": {digits}e{digits}".encode(), 1)
    elif kind == "bad-utf8":
        body = json.dumps(draw(st.sampled_from(KNOWN))).encode()
        # Between members, so that no key is garbled: a value under a garbled
        # key is no longer known to be a secret.
        at = draw(st.sampled_from([i + 1 for i, c in enumerate(body) if c in b",[{"]))
        body = body[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80"])) + body[at:]
    elif kind == "encoded":  # XML or JSON in another encoding, declared or not, with or without a DTD
        text = draw(st.sampled_from([json.dumps(draw(st.sampled_from(KNOWN))), ACCOUNT_XML.split("?>", 1)[1],
                                     f'<pin id="7" code="{draw(texts)}"/>']))
        if text.startswith("<") and draw(st.booleans()):
            dtd = draw(st.sampled_from([LAUGHS, '<!DOCTYPE x SYSTEM "http://127.0.0.1:1/x.dtd">', "<!DOCTYPE x>"]))
            text = dtd + text
        if draw(st.booleans()):
            declared = draw(st.sampled_from(["UTF-8", "UTF-16", "ISO-8859-1", "ascii", "x-unknown", "rot13", "hex",
                                             "cp500", "utf-7", ""]))
            text = f'<?xml version="1.0" encoding="{declared}"?>' + text
        codec = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1", "cp500"]))
        body = text.encode(codec, "replace")
    else:
        body = draw(st.binary(max_size=64))
    if draw(st.booleans()):  # truncated anywhere
        body = body[: draw(st.integers(0, len(body)))]
    return body


answers = st.fixed_dictionaries(
    {
        "status": st.sampled_from([200, 201, 204, 301, 302, 400, 401, 403, 404, 422, 429, 500, 502, 503, 504])
        | st.integers(200, 599),
        "body": bodies(),
        "Content-Type": st.sampled_from(["application/json", "text/xml", "text/html", "application/octet-stream"]),
        "Retry-After": st.none() | st.text(max_size=12) | st.integers(-5, 10**6).map(str),
        # Redirects stay on this machine: relative, a closed loopback port, odd schemes.
        "Location": st.none() | st.sampled_from(["/api/v2/user", "x", "http://127.0.0.1:1/x", "ftp://127.0.0.1/"]),
        "Content-Encoding": st.none() | st.sampled_from(["gzip", "deflate", "identity", "x-unknown", "gzip, gzip",
                                                         "br", "identity, gzip"]),
        "compress": st.booleans(),  # the body really is in its Content-Encoding (one layer, or two)
    }
)


@pytest.fixture(scope="module")
def scripted_server():
    from werkzeug import Response

    current: dict[str, Any] = {}

    def handler(request: Any) -> Response:
        # Header values are printable ASCII: anything else is refused by the test server itself.
        headers = {
            k: "".join(c for c in v if " " <= c <= "~")
            for k, v in current.items()
            if k in ("Retry-After", "Location", "Content-Encoding") and v is not None
        }
        body = current["body"]
        encoding = current["Content-Encoding"] or ""
        if current["compress"] and "gzip" in encoding:
            body = gzipped(body, layers=encoding.count("gzip"))
        elif current["compress"] and encoding == "deflate":
            body = __import__("zlib").compress(body)
        return Response(body, status=current["status"], headers=headers, content_type=current["Content-Type"])

    server = HTTPServer(host="127.0.0.1", port=0)
    server.expect_request("").respond_with_handler(handler)
    server.no_handler_status_code = 500
    server.start()
    yield server, current
    server.stop()


# Raw-socket servers with a scripted behaviour: interim answers, unasked extra
# answers, trickled bytes, odd encodings, bombs, and echoes of the secrets in
# every form.  One helper serves them all: it reads each request on a
# keep-alive connection and hands it to the script.


class Incoming:
    """One request as a raw server read it."""

    def __init__(self, line: str, headers: dict[str, str], body: bytes) -> None:
        self.line, self.headers, self.body = line, headers, body
        self.method, self.target = line.split(" ")[:2]
        self.path = self.target.split("?")[0]


def read_requests(conn: socket.socket) -> Any:
    """The requests arriving on ``conn``, one by one, until the client hangs up."""
    reader = conn.makefile("rb")
    while True:
        line = reader.readline(65537)
        if not line:
            return
        headers: dict[str, str] = {}
        for _ in range(200):
            header = reader.readline(65537)
            if header in (b"\r\n", b"\n", b""):
                break
            name, _, value = header.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        yield Incoming(line.decode("latin-1").strip(), headers, reader.read(int(headers.get("content-length", 0))))


def http_answer(status: int = 200, body: bytes = b"", headers: dict[str, str] | None = None,
                content_type: str = "application/json") -> bytes:
    head = f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase if status in iter(http.HTTPStatus) else 'X'}\r\n"
    fields = {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}
    return (head + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n").encode("latin-1") + body


def keep_alive(script: Callable[[socket.socket, Incoming], bool]) -> Callable[[socket.socket, threading.Event], None]:
    """A FaultServer handler that answers every request on a connection with
    ``script(conn, request)``, until it returns False or the client leaves."""

    def handle(conn: socket.socket, done: threading.Event) -> None:
        for request in read_requests(conn):
            if done.is_set() or not script(conn, request):
                return

    return handle


def hostile_config(port: int, **changes: Any) -> Config:
    url = f"http://127.0.0.1:{port}"
    values: dict[str, Any] = {"token": TOKEN, "server_url": url, "plex_tv_url": url + "/api/v2",
                              "clients_url": url + "/api/v2", "retries": 0, "timeout": 5.0, **changes}
    return Config(CLIENT_ID, **values)


def account_of(token: str) -> bytes:
    return json.dumps({"id": 1, "uuid": "u-" + token, "username": "user-" + token, "authToken": AUTH_TOKEN}).encode()


# Per request, one of these ways of answering; the server draws them from a
# seeded generator, so that every run mixes them the same way.
MIXED = ("plain", "early-hints", "continue", "processing", "extra-answer", "garbage", "204-with-body", "reset")




def gzipped(data: bytes, layers: int = 1) -> bytes:
    import gzip

    for _ in range(layers):
        data = gzip.compress(data, compresslevel=9)
    return data


def zeros_gzipped(size: int) -> bytes:
    """``size`` zero bytes gzipped, made in pieces (a gzip bomb, without holding the zeros)."""
    import zlib

    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    piece = bytes(1 << 20)
    out = [packer.compress(piece) for _ in range(size >> 20)]
    return b"".join(out) + packer.flush()


def utf16(text: str) -> bytes:
    return text.encode("utf-16")  # with its byte-order mark


LAUGHS = '<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">' \
         '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>'


def hostile_bodies() -> dict[str, tuple[dict[str, str], bytes]]:
    """name -> (headers, body) of answers made to cost memory, or to confuse a parser."""
    cap = plexauth.MAX_BODY_BYTES
    tiny = b"<user>" + b"<a/>" * ((cap - 20) // 4) + b"</user>"
    bomb = zeros_gzipped(256 << 20)
    return {
        "gzip-bomb": ({"Content-Encoding": "gzip"}, bomb),
        "gzip-gzip": ({"Content-Encoding": "gzip, gzip"}, gzipped(bomb)),
        "deflate-bomb": ({"Content-Encoding": "deflate"}, bomb[10:-8]),  # the raw deflate inside the gzip
        "unknown-encoding": ({"Content-Encoding": "br"}, b"{}"),
        "tiny-elements": ({}, tiny),
        "many-attributes": ({}, b"<user " + b" ".join(b'a%d=""' % i for i in range(cap // 12)) + b"/>"),
        "utf16-entities": ({}, utf16(LAUGHS + '<user username="&lol3;"/>')),
        "utf16-entity-account": ({}, utf16('<!DOCTYPE u [<!ENTITY x "' + "x" * 1000 + '">]><user username="&x;"/>')),
        "utf8-entities": ({}, (LAUGHS + '<user username="&lol3;"/>').encode()),
        "external-entity": ({}, b'<!DOCTYPE u [<!ENTITY x SYSTEM "file:///etc/passwd">]><user>&x;</user>'),
        "x-unknown": ({}, b'<?xml version="1.0" encoding="x-unknown"?><user id="1"/>'),
        "rot13": ({}, b'<?xml version="1.0" encoding="rot13"?><user id="1"/>'),
        "hex": ({}, b'<?xml version="1.0" encoding="hex"?><user id="1"/>'),
        "utf16-no-bom": ({}, '<user id="1"/>'.encode("utf-16-le")),
        "deep-xml": ({}, b"<a>" * 5000 + b"</a>" * 5000),
        "empty-objects": ({}, b"[" + b"{}," * ((cap - 10) // 3) + b"{}]"),
        "short-strings": ({}, b"[" + b'"ab",' * ((cap - 10) // 5) + b'"ab"]'),
        "deep-json": ({}, b"[" * 200_000 + b"]" * 200_000),
        "lone-surrogates": ({}, b'{"id": 1, "uuid": "u", "username": "\\ud800\\udfff\\udc00", "authToken": "t"}'),
        "endless-headers": ({f"X-{i}": "y" * 1000 for i in range(150)}, b"{}"),
        "over-cap": ({}, b"[" + b"0," * cap + b"0]"),
        # Just under the caps, made of what costs most once decoded: 1e308 would be a 1024-bit int.
        "near-cap-connections": ({}, json.dumps({"MediaContainer": {"Device": [{"name": "x", "Connection": [
            {"port": 1e308, "protocol": "https", "address": "a" * 40, "uri": "b" * 58, "local": True, "relay": False}
        ] * 9_990}]}}).encode()),
        "many-strings": ({}, b"[" + b'"\xc4\x80",' * ((cap - 10) // 5) + b'"a"]'),  # 400 000 strings
        "near-cap-services": ({}, json.dumps({**json.loads(account_of("many")), "services": [
            {"identifier": "i" * 40, "endpoint": "e" * 60, "token": "t" * 20, "status": "online"}
        ] * 9_990}).encode()),
    }


MEMORY_PROBE = r"""
import json, resource, sys
import plexauth
port, cases, ops = json.loads(sys.argv[1])
def config(product):
    url = f"http://127.0.0.1:{port}"
    return plexauth.Config("test-client-0001", token="t", product=product, server_url=url,
                           plex_tv_url=url + "/api/v2", clients_url=url + "/api/v2", retries=0, timeout=20,
                           total_timeout=60)
pin = plexauth.Pin(id=7, code="ABCD")
x, d = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo", "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
key = plexauth.DeviceKey(plexauth._thumbprint(x), {"kty": "OKP", "crv": "Ed25519", "x": x}, d)
def verify(c):
    plexauth._jwt_keys.clear()
    part = lambda doc: plexauth._b64url(json.dumps(doc).encode())
    return plexauth.verify_jwt(c, part({"alg": "EdDSA", "kid": "k"}) + "." + part({"exp": 1}) + ".AAAA")
calls = {
    "transient": plexauth.get_transient_token,
    "source": lambda c: plexauth.get_source_connection_information(c, "server://x"),
    "details": plexauth.get_token_details,
    "signin": lambda c: plexauth.post_users_sign_in_data(c, "me", "pw"),
    "pin-create": plexauth.create_pin,
    "pin-check": lambda c: plexauth.check_pin(c, pin),
    "ping": plexauth.ping,
    "signout": plexauth.sign_out,
    "resources": plexauth.get_resources,
    "home-users": plexauth.get_home_users,
    "switch": lambda c: plexauth.switch_home_user(c, plexauth.HomeUser(id=2, uuid="kid-uuid-0001")),
    "jwk": lambda c: plexauth.register_device_key(c, key),
    "jwt-pin-create": lambda c: plexauth.create_pin(c, key=key),
    "jwt": lambda c: plexauth.get_jwt(c, key),
    "jwt-keys": verify,
    "jwt-pin-check": lambda c: plexauth.check_pin(c, pin, key=key),
}
for name in ops:  # everything a call may load and make, loaded and made before the limit
    try:
        calls[name](config("warm-up"))
    except plexauth.PlexAuthError:
        pass
def vm_size():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
limit = vm_size() + 64 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = []
for case in cases:
    for name in ops:
        try:
            result = calls[name](config(case))
        except plexauth.PlexAuthError as exc:
            outcome = type(exc).__name__
        except BaseException as exc:
            outcome = "ESCAPED " + type(exc).__name__
        else:
            outcome = "ok " + type(result).__name__
        out.append([case, name, outcome])
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
print(json.dumps({"results": out, "grown": grown}))
"""


@pytest.fixture(scope="module")
def bodies_server():
    """A server that answers every request with the hostile body named by
    the request's X-Plex-Product (a harmless account for "warm-up")."""
    made = hostile_bodies()

    def script(conn: socket.socket, request: Incoming) -> bool:
        product = request.headers.get("x-plex-product", "")
        if product == "warm-up":
            headers, body = {}, account_of("warm")
        elif product == "endless-body":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[")
            with contextlib.suppress(OSError):
                for _ in range(64):  # 64 MiB at most, far past the cap
                    conn.sendall(b"0," * (1 << 19))
            return False
        elif product == "negative-chunk":  # http.client reads a chunk of size -1 to the end of the stream
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"-1\r\n")
            with contextlib.suppress(OSError):
                for _ in range(64):
                    conn.sendall(b"0," * (1 << 19))
            return False
        else:
            headers, body = made[product]
        status = 500 if request.headers.get("x-plex-token") == "error" else 200
        conn.sendall(http_answer(status, body, headers))
        return True

    server = FaultServer(keep_alive(script))
    yield server, [*made, "endless-body", "negative-chunk"]
    server.close()




SIGN_IN_SECRETS = {"token": TOKEN, "password": PASSWORD, "code": CODE}
# Forms found only by decoding the text further than masking can map back.
WITHHELD_FORMS = {"base64-wrapped", "base64-twice", "hex-of-base64", "base64-of-hex", "hex-of-utf-16",
                  "percent-5-times", "base64-of-utf-16", "markup-comment", "markup-unclosed-comment",
                  "fullwidth", "invisible-split", "fullwidth-invisible", "markup-styled", "other-digits",
                  "markup-escaped", "hex-of-utf-16-be-after-word", "hex-latin-1", "base64-latin-1",
                  "markup-cdata-escaped", "markup-html-tag", "mojibake-percent", "mojibake-base64", "mojibake-twice"}




def trickle(data: bytes, every: float) -> Callable[[socket.socket, threading.Event], None]:
    """Sends ``data`` one byte at a time, ``every`` seconds apart, until the client leaves."""

    def handle(conn: socket.socket, done: threading.Event) -> None:
        read_request(conn)
        for byte in data:
            if done.wait(every):
                return
            conn.sendall(bytes((byte,)))

    return handle


LONG_HEADERS = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"y" * 4000 + b"\r\n\r\n"
LONG_BODY = http_answer(200, json.dumps({"MediaContainer": {"token": "t" * 4000}}).encode())


def endless_continue(conn: socket.socket, done: threading.Event) -> None:
    # Slow enough that the time bound ends the call before the count of interim answers does.
    read_request(conn)
    while not done.wait(0.15):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")


@contextlib.contextmanager
def file_writes_fail() -> Any:
    """Writing any byte to a file fails with EFBIG, as on a full disk (RLIMIT_FSIZE)."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def kept_file(folder: Any, how: str, name: str = "client-id") -> None:
    kept = folder / "plexauth" / name
    kept.parent.mkdir(parents=True, mode=0o700)
    if how == "symlink-to-dev-zero":
        kept.symlink_to("/dev/zero")
        return
    kept.write_text("plexauth-someone-elses")
    kept.chmod(0o600)
    if how == "world-writable":
        kept.chmod(0o666)
    elif how == "world-readable":
        kept.chmod(0o644)
    elif how == "other-owner":
        os.chown(kept, 4242, 4242)
    elif how == "too-large":
        kept.write_bytes(b"x" * 5000)
    elif how == "folder-world-writable":
        kept.parent.chmod(0o777)
    elif how == "fifo":
        kept.unlink()
        os.mkfifo(kept, 0o600)


CLI_MEMORY_PROBE = r"""
import io, json, resource, sys
import plexauth
sys.stdout = io.StringIO()  # what is printed is kept here, as a pipe would take it
plexauth.main(["whoami"])  # everything loaded and made once, before the limit
def vm_size():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
limit = vm_size() + 64 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
codes = [plexauth.main(argv) for argv in (["whoami"], ["whoami", "--json"])]
sys.stdout = sys.__stdout__
print(json.dumps(codes))
"""




class FakeTTY(io.StringIO):
    """Standard input that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def cli(httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: pytest.CaptureFixture[str]):
    """Runs ``main(argv)`` in this process against the test server; returns
    (exit code, stdout, stderr), and checks that no secret was printed that
    the command was not asked for."""
    for name in list(os.environ):
        if name.startswith("PLEX_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("PLEX_SERVER_URL", httpserver.url_for("").rstrip("/"))
    monkeypatch.setenv("PLEX_TV_URL", httpserver.url_for("/api/v2"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))

    def run(*argv: str, shown: tuple[str, ...] = ()) -> tuple[int, str, str]:
        code = plexauth.main(list(argv))
        out, err = capsys.readouterr()
        assert_no_secret(err)
        assert_no_secret(out, tuple(c for c in CANARIES if c not in shown and not any(c in s for s in shown)))
        return code, out, err

    return run


# ===========================================================================
# Tests: module surface
# ===========================================================================


def test_all__equals_public_names() -> None:
    public = {
        name
        for name, value in vars(plexauth).items()
        if not name.startswith("_") and getattr(value, "__module__", "plexauth") == "plexauth"
        and not isinstance(value, type(plexauth))
    }
    public -= {"annotations"}  # the __future__ feature object
    assert sorted(plexauth.__all__) == sorted(public)


def test_version__is_config_default() -> None:
    assert Config(CLIENT_ID).version == plexauth.__version__


def test_import__alone_does_no_io_and_reads_no_environment(tmp_path: Any) -> None:
    shutil.copy(plexauth.__file__, tmp_path / "plexauth.py")
    probe = """
import importlib.util, os, sys
# The dependency and the stdlib modules are loaded first, and the finder has
# located plexauth.py: what remains is plexauth's own module code.
import urllib3, dataclasses, datetime, enum, http.client, json, logging, math, re, threading, time, urllib.parse
importlib.util.find_spec("plexauth")
events = []
def hook(event, args):
    if event == "open" and not str(args[0]).endswith((".py", ".pyc", ".so")) and "__pycache__" not in str(args[0]):
        events.append((event, str(args[0])))
    elif event.startswith(("socket.", "subprocess.", "os.system", "os.listdir", "os.scandir")):
        events.append((event, ""))
sys.addaudithook(hook)
class Spy(type(os.environ)):
    pass
reads = []
real = os.environ
class EnvSpy(dict):
    def __getitem__(self, key): reads.append(key); return real[key]
    def get(self, key, default=None): reads.append(key); return real.get(key, default)
    def __contains__(self, key): reads.append(key); return key in real
os.environ = EnvSpy()
import plexauth
os.environ = real
print(plexauth.__file__)
print("EVENTS", events)
print("ENV", reads)
"""
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60
    )
    lines = result.stdout.splitlines()
    assert lines[0] == str(tmp_path / "plexauth.py")
    assert lines[1] == "EVENTS []"
    assert lines[2] == "ENV []"


# ===========================================================================
# Tests: Config
# ===========================================================================


@pytest.mark.parametrize(
    ("kwargs", "exc", "message"),
    [
        ({"client_identifier": ""}, ValueError, "Config.client_identifier must not be empty, got ''"),
        ({"client_identifier": None}, TypeError, "Config.client_identifier must be a str, not NoneType"),
        ({"client_identifier": "a\r\nX-Evil: 1"}, ValueError, "Config.client_identifier must not contain control"),
        ({"device_name": "tv\udcff"}, ValueError, "Config.device_name must not contain lone surrogates, got 'tv"),
        ({"token": ""}, ValueError, "Config.token must not be empty"),
        ({"token": 123}, TypeError, "Config.token must be a str, not int"),
        # No server takes a header line that long; and every answer is searched for it.
        ({"token": "t" * 4000 + "\u00fc" * 2100}, ValueError, "Config.token must not be over 8 KiB long (in UTF-8)"),
        ({"device_name": ""}, ValueError, "Config.device_name must not be empty"),
        ({"product": None}, TypeError, "Config.product must be a str"),
        ({"server_url": 5}, TypeError, "Config.server_url must be a str, not int"),
        ({"server_url": "ftp://host"}, ValueError, "Config.server_url must be an http:// or https:// URL"),
        ({"server_url": "localhost:32400"}, ValueError, "Config.server_url must be an http:// or https:// URL"),
        ({"server_url": "http://"}, ValueError, "Config.server_url must be an http:// or https:// URL"),
        ({"server_url": "http://h:99999"}, ValueError, "Config.server_url must be an http:// or https:// URL"),
        ({"plex_tv_url": "https://plex.tv/api/v2?x=1"}, ValueError, "Config.plex_tv_url must not carry"),
        ({"plex_tv_url": "https://u:p@plex.tv/api/v2"}, ValueError, "Config.plex_tv_url must not carry"),
        ({"timeout": -1}, ValueError, "Config.timeout must be a positive number of seconds, got -1"),
        ({"timeout": float("nan")}, ValueError, "Config.timeout must be a positive"),
        ({"timeout": True}, TypeError, "Config.timeout must be a number of seconds, not bool"),
        ({"timeout": "10"}, TypeError, "Config.timeout must be a number of seconds, not str"),
        ({"retries": -1}, ValueError, "Config.retries must be between 0 and 10, got -1"),
        ({"retries": False}, TypeError, "Config.retries must be an int, not bool"),
        ({"retries": 1.5}, TypeError, "Config.retries must be an int, not float"),
        ({"verify": "/no/such/ca.pem"}, ValueError, "Config.verify names no CA bundle file: '/no/such/ca.pem'"),
        ({"verify": 1}, TypeError, "Config.verify must be a bool or a CA bundle path, not int"),
        ({"total_timeout": 0}, ValueError, "Config.total_timeout must be a positive number of seconds, got 0"),
        ({"total_timeout": None}, TypeError, "Config.total_timeout must be a number of seconds, not NoneType"),
    ],
    ids=lambda v: str(v)[:40] if isinstance(v, dict) else None,
)
def test_config__rejects(kwargs: dict[str, Any], exc: type, message: str) -> None:
    kwargs = {"client_identifier": CLIENT_ID, **kwargs}
    with raises(exc) as info:
        Config(**kwargs)
    assert str(info.value).startswith(message)


def test_config__secret_not_in_validation_message() -> None:
    with raises(ValueError, match="control characters") as info:
        Config(CLIENT_ID, token=TOKEN + "\n")
    assert str(info.value) == "Config.token must not contain control characters"


def test_config__frozen_and_replace() -> None:
    config = Config(CLIENT_ID)
    with raises(dataclasses.FrozenInstanceError):
        config.token = TOKEN  # type: ignore[misc]
    changed = dataclasses.replace(config, token=TOKEN)
    assert changed.token == TOKEN
    assert changed != config
    with raises(ValueError, match=r"Config\.timeout"):
        dataclasses.replace(config, timeout=0)


def test_config__from_env(monkeypatch: pytest.MonkeyPatch, token_env: None) -> None:
    monkeypatch.setenv("PLEX_CLIENT_IDENTIFIER", "env-client")
    monkeypatch.setenv("PLEX_SERVER_URL", "http://192.0.2.10:32400")
    monkeypatch.setenv("PLEX_TV_URL", "")
    config = Config.from_env(timeout=3.0)
    assert config == Config("env-client", token=TOKEN, server_url="http://192.0.2.10:32400", timeout=3.0)
    assert Config.from_env(client_identifier="override").client_identifier == "override"


def test_config__from_env_needs_client_identifier(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PLEX_CLIENT_IDENTIFIER", raising=False)
    with raises(ValueError, match="set PLEX_CLIENT_IDENTIFIER"):
        Config.from_env()


# ===========================================================================
# Tests: models
# ===========================================================================


def test_dataclass__config_and_models_are_frozen_dataclasses() -> None:
    for cls in (Config, plexauth.UserPlexAccount, plexauth.Connection, plexauth.Pin):
        assert dataclasses.is_dataclass(cls), cls
        assert cls.__dataclass_params__.frozen, cls
        if sys.version_info >= (3, 10):  # before, "str | None" cannot be evaluated (for any dataclass)
            assert list(typing.get_type_hints(cls)) == [field.name for field in dataclasses.fields(cls)]
    assert [field.name for field in dataclasses.fields(Config)][:3] == ["client_identifier", "token", "server_url"]
    assert not dataclasses.fields(plexauth.Connection)[-1].compare
    assert str(inspect.signature(plexauth.Connection)) == (
        "(protocol: 'str | None' = None, address: 'str | None' = None, port: 'int | None' = None, "
        "uri: 'str | None' = None, local: 'bool | None' = None, relay: 'bool | None' = None, "
        "ipv6: 'bool | None' = None, raw: 'Mapping[str, Any]' = <factory>) -> None"
    )
    if sys.version_info >= (3, 10):  # dataclasses make __match_args__ from 3.10 on
        assert Config.__match_args__[:2] == ("client_identifier", "token")
    connection = plexauth.Connection(protocol="http", port=32400)
    assert dataclasses.asdict(connection) == {"protocol": "http", "address": None, "port": 32400, "uri": None,
                                              "local": None, "relay": None, "ipv6": None, "raw": {}}
    config = Config(CLIENT_ID, token=TOKEN)
    assert pickle.loads(pickle.dumps(config)) == config
    if sys.version_info >= (3, 13):
        assert copy.replace(config, token="other").token == "other"
    assert copy.copy(config) == config


def test_dataclass__behaves_as_dataclasses_do() -> None:
    config = Config(CLIENT_ID, TOKEN, timeout=3)
    assert dataclasses.asdict(config)["timeout"] == 3
    assert dataclasses.replace(config, retries=0) == Config(CLIENT_ID, token=TOKEN, timeout=3, retries=0)
    assert config == Config(CLIENT_ID, token=TOKEN, timeout=3)
    assert config != Config(CLIENT_ID, token=TOKEN)
    assert config != (CLIENT_ID, TOKEN)
    assert hash(config) == hash(Config(CLIENT_ID, TOKEN, timeout=3))
    with raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'token'"):
        config.token = "x"  # type: ignore[misc]
    with raises(dataclasses.FrozenInstanceError, match="cannot delete field 'token'"):
        del config.token  # type: ignore[misc]
    with raises(TypeError, match=r"missing 1 required positional argument: 'client_identifier'"):
        Config()  # type: ignore[call-arg]
    with raises(TypeError, match=r"got an unexpected keyword argument 'tokn'"):
        Config(CLIENT_ID, tokn=TOKEN)  # type: ignore[call-arg]
    used = Config(CLIENT_ID, token=TOKEN, server_url="http://127.0.0.1:9")
    plexauth._prepared(used)  # what a call works out, with the pool in it
    assert pickle.loads(pickle.dumps(used)) == used
    assert "_prepared" not in vars(copy.copy(used))
    service = plexauth.Service(identifier="a", token=SERVICE_TOKEN)
    assert service.raw == {}
    assert pickle.loads(pickle.dumps(service)) == service
    assert {service, plexauth.Service(identifier="a", token=SERVICE_TOKEN)} == {service}
    if sys.version_info >= (3, 10):
        assert plexauth.Service.__match_args__[:2] == ("identifier", "endpoint")


def test_models__bool_and_int_forms() -> None:
    decode = plexauth._build
    conn = decode(plexauth.Connection, {"local": "true", "relay": "False", "port": " 32400 "})
    assert (conn.local, conn.relay, conn.port) == (True, False, 32400)
    conn = decode(plexauth.Connection, {"local": 0, "relay": 2, "port": "99999999999999999999999"})
    assert (conn.local, conn.relay, conn.port) == (False, None, None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1556281940, datetime.datetime(2019, 4, 26, 12, 32, 20, tzinfo=datetime.timezone.utc)),
        ("1556281940", datetime.datetime(2019, 4, 26, 12, 32, 20, tzinfo=datetime.timezone.utc)),
        ("2026-10-01T23:09:52Z", datetime.datetime(2026, 10, 1, 23, 9, 52, tzinfo=datetime.timezone.utc)),
        ("2026-10-01T23:09:52.250+02:00",
         datetime.datetime(2026, 10, 1, 21, 9, 52, 250000, tzinfo=datetime.timezone.utc)),
        ("2026-10-01T23:09:52", datetime.datetime(2026, 10, 1, 23, 9, 52, tzinfo=datetime.timezone.utc)),
        ("0001-01-01T00:00:00+01:00", None),  # before year 1 in UTC
        ("tomorrow", None),
        ("", None),
        (10**18, None),
        ([], None),
    ],
    ids=["seconds", "seconds-text", "iso-z", "iso-offset", "iso-naive", "out-of-range", "text", "empty", "huge",
         "list"],
)
def test_models__times_from_seconds_or_iso_text(value: Any, expected: Any) -> None:
    assert plexauth._time(value) == expected


def test_models__reprs_mask_what_the_server_echoed(fault_server: Any) -> None:
    doc = {**ACCOUNT, "username": TOKEN, "email": f"{PASSWORD}@example.com",
           "subscription": {**ACCOUNT["subscription"], "plan": CODE}}
    server = fault_server(keep_alive(lambda conn, request: conn.sendall(
        http_answer(201, json.dumps(doc).encode())) is None))
    account = plexauth.post_users_sign_in_data(hostile_config(server.port), "me", PASSWORD, verification_code=CODE)
    assert account.username == TOKEN  # the data is as sent...
    for text in (repr(account), str(account), repr(account.subscription)):
        assert_no_secret(text)  # ...its repr is not
    assert "username='***'" in repr(account)
    assert pickle.loads(pickle.dumps(account)) == account
    assert "_secrets" not in vars(pickle.loads(pickle.dumps(account)))


# ===========================================================================
# Tests: get_transient_token
# ===========================================================================


@pytest.mark.parametrize(("made", "reason"), [
    (TOKEN, "'MediaContainer.token' is the token sent, not a new one"),
    (fullwidth(TOKEN), "a token in it holds a secret the request sent (its password, code or token)"),
    (base64.b64encode(TOKEN.encode("utf-16-le")).decode(),
     "a token in it holds a secret the request sent (its password, code or token)"),
], ids=["as-sent", "fullwidth", "base64-of-utf-16"])
def test_get_transient_token__the_token_sent_given_back_is_refused(httpserver: HTTPServer, config: Config,
                                                                  made: str, reason: str) -> None:
    # It is no transient token: the command line, asked for one, would print the caller's own (masked: "***").
    httpserver.expect_request("/security/token").respond_with_json({"MediaContainer": {"token": made}})
    with raises(ResponseError) as info:
        plexauth.get_transient_token(config)
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (json.dumps({"MediaContainer": {"size": 0, "token": TRANSIENT}}), "application/json"),
        (f'<?xml version="1.0" encoding="UTF-8"?>\n<MediaContainer size="0" token="{TRANSIENT}"/>', "text/xml"),
    ],
    ids=["json", "xml"],
)
def test_get_transient_token__returns_token(httpserver: HTTPServer, config: Config, body: str, content_type: str):
    httpserver.expect_request("/security/token", method="GET").respond_with_data(body, content_type=content_type)

    assert plexauth.get_transient_token(config) == TRANSIENT

    (request,) = requests_seen(httpserver)
    assert request.args.to_dict() == {"type": "delegation", "scope": "all"}
    assert request.headers["X-Plex-Token"] == TOKEN
    assert request.headers["Accept"] == "application/json"
    assert request.headers["X-Plex-Client-Identifier"] == CLIENT_ID
    assert request.headers["X-Plex-Product"] == "plexauth"
    assert request.headers["X-Plex-Version"] == plexauth.__version__
    assert TOKEN not in request.full_path


def test_get_transient_token__accepts_enum_members_and_strings(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/security/token").respond_with_json({"MediaContainer": {"token": TRANSIENT}})
    token = plexauth.get_transient_token(
        config, plexauth.GetTransientTokenQueryParamType.DELEGATION, plexauth.Scope.ALL
    )
    assert token == TRANSIENT
    assert plexauth.get_transient_token(config, "delegation", "all") == TRANSIENT  # type: ignore[arg-type]
    with raises(ValueError, match="type_ must be one of"):
        plexauth.get_transient_token(config, "admin")  # type: ignore[arg-type]
    assert len(httpserver.log) == 2


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"MediaContainer": {"size": 0}}', "'MediaContainer.token' is missing or not a string"),
        (b'{"MediaContainer": {"token": 12345}}', "'MediaContainer.token' is missing or not a string"),
        (b'{"MediaContainer": {"token": ""}}', "'MediaContainer.token' is missing or not a string"),
        (b'{"token": "x"}', "'MediaContainer' is missing"),
        (b"[1, 2]", "'MediaContainer' is missing"),
        (b'<MediaContainer size="0"/>', "'MediaContainer.token' is missing or not a string"),
        (b'{"MediaContainer": {"token": "abc"', "invalid JSON at line 1, column 35"),
        (b"<MediaContainer token='x'", "invalid XML at line 1, column 0"),
        (b'{"MediaContainer": {"token": "\xff\xfe"}}', "the body is not valid UTF-8"),
        (b"", "the body is empty"),
        (b"OK", "the body is neither a JSON object or list nor XML"),
        (b'<!DOCTYPE x [<!ENTITY a "b">]><MediaContainer token="&a;"/>', "XML with a DTD or entities is refused"),
        (b"[" * 5_000 + b"]" * 5_000, "the body could not be decoded"),
        (b"<a>" * 40 + b"</a>" * 40, "the XML is nested too deeply"),
    ],
    ids=[
        "no-token",
        "token-not-str",
        "token-empty",
        "no-container",
        "list",
        "xml-no-token",
        "truncated-json",
        "truncated-xml",
        "bad-utf8",
        "empty",
        "text",
        "xml-entities",
        "deep-json",
        "deep-xml",
    ],
)
def test_get_transient_token__undecodable_2xx(httpserver: HTTPServer, config: Config, body: bytes, reason: str):
    httpserver.expect_request("/security/token").respond_with_data(body, status=200)
    with raises(ResponseError) as info:
        plexauth.get_transient_token(config)
    if body.startswith(b"[[[") and info.value.reason == "'MediaContainer' is missing":
        assert sys.version_info >= (3, 12)  # whose JSON decoder reads 5 000 levels: a list, not a container
        reason = info.value.reason
    assert info.value.reason == reason
    assert info.value.status == 200
    assert str(info.value) == f"GET /security/token answered 200 with a body that could not be used: {reason}"
    assert info.value.__cause__ is None


# ===========================================================================
# Tests: get_source_connection_information
# ===========================================================================


@pytest.mark.parametrize(("body", "content_type"), [(json.dumps(SOURCE), "application/json"), (SOURCE_XML, "text/xml")],
                         ids=["json", "xml"])
def test_get_source_connection_information__returns_model(
    httpserver: HTTPServer, config: Config, body: str, content_type: str
) -> None:
    httpserver.expect_request("/security/resources").respond_with_data(body, content_type=content_type)

    info = plexauth.get_source_connection_information(config, "server://0123456789abcdef")

    assert info.name == "Living Room"
    assert info.client_identifier == "0123456789abcdef"
    assert info.access_token == ACCESS_TOKEN
    assert info.connections == (
        plexauth.Connection("https", "192.0.2.10", 32400, "https://192-0-2-10.abc.plex.direct:32400", True, False),
        plexauth.Connection("https", "198.51.100.7", 8443, "https://198-51-100-7.abc.plex.direct:8443", False, True),
    )
    assert info.raw["name"] == "Living Room"
    assert "***" in repr(info)
    assert_no_secret(repr(info))
    (request,) = requests_seen(httpserver)
    assert request.method == "GET"
    assert request.args.to_dict() == {"source": "server://0123456789abcdef"}
    assert request.headers["X-Plex-Token"] == TOKEN


def test_get_source_connection_information__encodes_source_and_refresh(
    httpserver: HTTPServer, config: Config
) -> None:
    httpserver.expect_request("/security/resources").respond_with_json(SOURCE)
    source = "provider://a b&c=d#e/../ü?x"

    plexauth.get_source_connection_information(config, source, refresh=True)

    (request,) = requests_seen(httpserver)
    assert request.args.to_dict() == {"source": source, "refresh": "1"}
    assert request.query_string == b"source=provider%3A%2F%2Fa%20b%26c%3Dd%23e%2F..%2F%C3%BC%3Fx&refresh=1"


def test_get_source_connection_information__single_device_list_and_no_connections(
    httpserver: HTTPServer, config: Config
) -> None:
    httpserver.expect_request("/security/resources").respond_with_json(
        {"MediaContainer": {"Device": [{"name": "cloud", "clientIdentifier": 7, "Connection": "junk"}]}}
    )
    info = plexauth.get_source_connection_information(config, "provider://tv.plex.provider.vod")
    assert info == plexauth.SourceConnectionInformation(name="cloud")
    assert info.raw["clientIdentifier"] == 7


@pytest.mark.parametrize(
    "body", [b'{"MediaContainer": {"size": 0}}', b'{"MediaContainer": {"Device": []}}', b'<MediaContainer size="0"/>'],
    ids=["json", "empty-list", "xml"],
)
def test_get_source_connection_information__no_device_is_response_error(
    httpserver: HTTPServer, config: Config, body: bytes
) -> None:
    httpserver.expect_request("/security/resources").respond_with_data(body)
    with raises(ResponseError, match=r"'MediaContainer.Device' is missing$"):
        plexauth.get_source_connection_information(config, "server://x")


@pytest.mark.parametrize(
    ("source", "exc"), [("", ValueError), ("\udcff", ValueError), (None, TypeError), (b"server://x", TypeError)]
)
def test_get_source_connection_information__rejects_bad_source(config: Config, source: Any, exc: type) -> None:
    with raises(exc, match="source must"):
        plexauth.get_source_connection_information(config, source)


# ===========================================================================
# Tests: get_token_details
# ===========================================================================


def test_get_token_details__returns_account(httpserver: HTTPServer, config: Config, account_body: tuple[str, str]):
    body, content_type = account_body
    httpserver.expect_request("/api/v2/user", method="GET").respond_with_data(body, content_type=content_type)

    account = plexauth.get_token_details(config)

    check_account(account)
    (request,) = requests_seen(httpserver)
    assert request.headers["X-Plex-Token"] == TOKEN
    assert request.query_string == b""
    assert "Content-Type" not in request.headers


def test_get_token_details__json_and_xml_decode_equal(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_oneshot_request("/api/v2/user").respond_with_json(ACCOUNT)
    httpserver.expect_oneshot_request("/api/v2/user").respond_with_data(ACCOUNT_XML)
    assert plexauth.get_token_details(config) == plexauth.get_token_details(config)


def test_get_token_details__tolerates_odd_optional_values(httpserver: HTTPServer, config: Config) -> None:
    odd = {
        "id": "42",
        "uuid": "u",
        "username": "x",
        "authToken": AUTH_TOKEN,
        "joinedAt": 10**30,
        "rememberExpiresAt": "soon",
        "hasPassword": "maybe",
        "twoFactorEnabled": 1,
        "homeSize": True,
        "maxHomeSize": 15.0,
        "email": None,
        "subscription": [],
        "profile": "none",
        "services": {"identifier": "lonely"},
        "roles": "plexpass",
        "entitlements": [1, None, "ios", {"id": "android"}],
    }
    httpserver.expect_request("/api/v2/user").respond_with_json(odd)
    account = plexauth.get_token_details(config)
    assert (account.id, account.joined_at, account.remember_expires_at) == (42, None, None)
    assert (account.has_password, account.two_factor_enabled) == (None, True)
    assert (account.home_size, account.max_home_size, account.email) == (None, 15, None)
    assert (account.subscription, account.profile) == (None, None)
    assert account.services == (plexauth.Service(identifier="lonely"),)
    assert (account.roles, account.entitlements) == ((), ("ios", "android"))


@pytest.mark.parametrize("missing", ["id", "uuid", "username", "authToken"])
def test_get_token_details__missing_required_field(httpserver: HTTPServer, config: Config, missing: str) -> None:
    body = {k: v for k, v in ACCOUNT.items() if k != missing}
    httpserver.expect_request("/api/v2/user").respond_with_json(body)
    with raises(ResponseError) as info:
        plexauth.get_token_details(config)
    assert str(info.value) == (
        "GET /api/v2/user answered 200 with a body that could not be used: "
        f"{missing!r} is missing or has the wrong type"
    )


def test_get_token_details__not_an_object(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_json(["not", "an", "account"])
    with raises(ResponseError, match="expected an object for UserPlexAccount, got list"):
        plexauth.get_token_details(config)


# ===========================================================================
# Tests: post_users_sign_in_data
# ===========================================================================


def test_post_users_sign_in_data__returns_account(
    httpserver: HTTPServer, config: Config, account_body: tuple[str, str]
) -> None:
    body, content_type = account_body
    httpserver.expect_request("/api/v2/users/signin", method="POST").respond_with_data(
        body, status=201, content_type=content_type
    )

    account = plexauth.post_users_sign_in_data(
        config, "me@example.com", PASSWORD, verification_code="123456", remember_me=True
    )

    check_account(account)
    (request,) = requests_seen(httpserver)
    assert request.method == "POST"
    assert request.query_string == b""
    assert "X-Plex-Token" not in request.headers
    assert request.headers["X-Plex-Client-Identifier"] == CLIENT_ID
    assert request.headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert request.form.to_dict() == {
        "login": "me@example.com",
        "password": PASSWORD,
        "rememberMe": "true",
        "verificationCode": "123456",
    }


def test_post_users_sign_in_data__minimal_form(httpserver: HTTPServer) -> None:
    httpserver.expect_request("/api/v2/users/signin", method="POST").respond_with_json(ACCOUNT, status=201)
    config = Config(CLIENT_ID, plex_tv_url=httpserver.url_for("/api/v2/"))  # trailing slash is fine
    plexauth.post_users_sign_in_data(config, "me", "pw")
    (request,) = requests_seen(httpserver)
    assert request.path == "/api/v2/users/signin"
    assert request.form.to_dict() == {"login": "me", "password": "pw", "rememberMe": "false"}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"login": "", "password": "pw"}, ValueError, "login must not be empty, got ''$"),
        ({"login": "me", "password": "\ud800"}, ValueError, "password must not contain lone surrogates$"),
        ({"login": "me", "password": None}, TypeError, "password must be a str, not NoneType"),
        ({"login": "me", "password": "p" * 8193}, ValueError, "password must not be over 8 KiB long \\(in UTF-8\\)$"),
        ({"login": "me", "password": "pw", "verification_code": 123456}, TypeError, "verification_code must be a str"),
    ],
)
def test_post_users_sign_in_data__rejects_bad_arguments(config: Config, kwargs: Any, exc: type, match: str) -> None:
    with raises(exc, match=match):
        plexauth.post_users_sign_in_data(config, **kwargs)


@pytest.mark.parametrize(
    ("status", "headers"), [(503, {"Retry-After": "0"}), (307, {"Location": "/api/v2/elsewhere"})], ids=["503", "307"]
)
def test_post_users_sign_in_data__sent_once(
    httpserver: HTTPServer, config: Config, status: int, headers: dict[str, str]
) -> None:
    httpserver.expect_request("/api/v2/users/signin").respond_with_data("busy", status=status, headers=headers)
    with raises(APIError) as info:
        plexauth.post_users_sign_in_data(config, "me", PASSWORD)
    assert info.value.status == status
    assert len(httpserver.log) == 1


def revoking_signin_server(fault_server: Any, body: bytes) -> tuple[Any, list[str]]:
    """A plex.tv whose sign-in answers ``body`` (201), and the tokens its sign-out (DELETE) was sent."""
    revoked: list[str] = []

    def script(conn: socket.socket, request: Incoming) -> bool:
        if request.method == "DELETE":
            revoked.append(request.headers["x-plex-token"])
            conn.sendall(http_answer(204))
        else:
            conn.sendall(http_answer(201, body))
        return True

    return fault_server(keep_alive(script)), revoked


def test_signin__a_token_in_an_answer_that_cannot_be_used_is_revoked(fault_server: Any) -> None:
    # A new token, in an answer that breaks the model, in bytes that are not UTF-8.
    server, revoked = revoking_signin_server(
        fault_server, b'{"id": "one", "uuid": "u\xff", "username": "me", "authToken": "' + AUTH_TOKEN.encode() + b'"}')
    with raises(ResponseError) as info:
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", PASSWORD)
    assert info.value.reason == "the body is not valid UTF-8; the new token in it was revoked"
    assert revoked == [AUTH_TOKEN]


@pytest.mark.parametrize("made", [f"tok-{PASSWORD}-en", f"{TOKEN.lower()}2", f"x{CODE}", PASSWORD, CODE.lower(),
                                  base64.b64encode(PASSWORD.encode()).decode(), f"t{PASSWORD.encode().hex()}",
                                  urllib.parse.quote(PASSWORD), html.escape(PASSWORD), " ".join(PASSWORD),
                                  fullwidth(PASSWORD),
                                  PASSWORD[:5] + "<!---->" + PASSWORD[5:], fullwidth(CODE), "\u200b".join(CODE),
                                  base64.b64encode(PASSWORD.encode("utf-16-le")).decode(),
                                  # Escapes that stand for a gap, what shows nothing, or a styled letter.
                                  "+".join(CODE), PASSWORD[:6] + "&#8203;" + PASSWORD[6:],
                                  CODE[:6] + "%E2%80%8B" + CODE[6:],
                                  "".join(f"&#x{ord(char):X};" for char in fullwidth(CODE)),
                                  "tok-" + CODE.encode("utf-16-le").hex(),
                                  base64.b64encode(base64.b64encode(PASSWORD.encode("utf-16-le"))).decode(),
                                  # Its UTF-8 read as Latin-1 (mojibake), as it is and escaped; split by
                                  # markup (CDATA, a tag as HTML5 reads it); escaped, then UTF-16, then base64.
                                  mojibake(PASSWORD), urllib.parse.quote(mojibake(PASSWORD)),
                                  PASSWORD[:5] + "<![CDATA[" + PASSWORD[5:9] + "]]>" + PASSWORD[9:],
                                  PASSWORD[:5] + "<a<b>" + PASSWORD[5:],
                                  base64.b64encode(urllib.parse.quote(PASSWORD).encode("utf-16-le")).decode(),
                                  # A JWT whose claims hold it JSON-escaped (as json.dumps writes "\u00fc").
                                  "eyJhbGciOiJIUzI1NiJ9." + base64.urlsafe_b64encode(json.dumps(
                                      {"sub": "me", "p": PASSWORD}).encode()).decode().rstrip("=") + "." + "s" * 43])
def test_signin__a_new_token_that_holds_a_secret_of_the_request_is_refused(fault_server: Any, made: str) -> None:
    """A token made of the password, the code or the token used would show
    it wherever the token is shown (the command line prints a new one when
    asked): refused, and revoked; the password or code also when the token
    is one of them, or holds them in a form masking finds (in base64, hex,
    percent-encoded); the token used, given back whole, is no such token."""
    server, revoked = revoking_signin_server(
        fault_server, json.dumps({"id": 1, "uuid": "u", "username": "me", "authToken": made}).encode())
    config = dataclasses.replace(hostile_config(server.port), token=TOKEN)
    with raises(ResponseError) as info:
        plexauth.post_users_sign_in_data(config, "me", PASSWORD, verification_code=CODE)
    sweep(info.value, (*CANARIES, made))
    assert info.value.reason == ("a token in it holds a secret the request sent (its password, code or token); "
                                 "the new token in it was revoked")
    assert revoked == [made.encode().decode("latin-1")]  # as the raw server reads the header's bytes


def test_signin__a_long_jwt_that_holds_base64_is_taken(fault_server: Any) -> None:
    # A JWT of 6.9 KiB whose header holds a certificate chain (x5c: base64 inside base64) is read
    # through within the decoding budget, and taken: it holds no secret of the request.
    rng = random.Random(9)

    def part(doc: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(doc).encode()).decode().rstrip("=")

    chain = [base64.b64encode(bytes(rng.randrange(256) for _ in range(900))).decode() for _ in range(4)]
    made = (part({"alg": "RS256", "typ": "JWT", "x5c": chain}) + "." + part({"iss": "plex.tv", "exp": 1800000000})
            + "." + base64.urlsafe_b64encode(bytes(rng.randrange(256) for _ in range(256))).decode().rstrip("="))
    server, revoked = revoking_signin_server(
        fault_server, json.dumps({"id": 1, "uuid": "u", "username": "me", "authToken": made}).encode())
    account = plexauth.post_users_sign_in_data(hostile_config(server.port), "me", PASSWORD, verification_code=CODE)
    assert (account.auth_token, revoked) == (made, [])
    assert 6 * 1024 < len(made) < 8 * 1024


@pytest.mark.parametrize("made", ["4.82913e5", "t-482913.0-x"])
def test_signin__a_new_token_that_holds_the_code_as_a_number_is_refused(fault_server: Any, made: str) -> None:
    server, revoked = revoking_signin_server(
        fault_server, json.dumps({"id": 1, "uuid": "u", "username": "me", "authToken": made}).encode())
    with raises(ResponseError) as info:
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", PASSWORD, verification_code="482913")
    assert info.value.reason.startswith("a token in it holds a secret the request sent")
    assert revoked == [made]


@pytest.mark.parametrize(("made", "reason"), [
    # 2 MiB of short hex runs, each to decode: no token is so long (no header could carry it).
    (".".join(f"{number:06x}" for number in range(280_000)), "'authToken' is missing or has the wrong type"),
    # 8 KiB whose readings hold more runs to decode than any token looked through.
    ("".join(f"z{i:04x}" + "a" * 95 + "%2B" for i in range(78)), "a token in it holds a secret the request sent"),
], ids=["2-mib", "8-kib-of-runs"])
def test_home_users__a_token_of_many_runs_to_decode_is_refused_in_time(httpserver: HTTPServer, config: Config,
                                                                       made: str, reason: str) -> None:
    httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch", method="POST").respond_with_json(
        {**ACCOUNT, "authToken": made}, status=201)
    started = time.monotonic()
    with raises(ResponseError) as info:
        plexauth.switch_home_user(dataclasses.replace(config, total_timeout=2.0),
                                  plexauth.HomeUser(id=2, uuid="kid-uuid-0001"), pin=HOME_PIN)
    assert time.monotonic() - started < 8  # well under a second here
    assert info.value.reason.startswith(reason)


@pytest.mark.parametrize("password", [" " * 8, "\u200b" * 8], ids=["spaces", "zero-width"])
def test_signin__a_password_that_reads_as_nothing_holds_no_token(fault_server: Any, password: str) -> None:
    # What shows nothing is dropped before looking: such a password is in no token, rather than in all.
    server, revoked = revoking_signin_server(
        fault_server, json.dumps({"id": 1, "uuid": "u", "username": "me", "authToken": AUTH_TOKEN}).encode())
    account = plexauth.post_users_sign_in_data(hostile_config(server.port), "me", password)
    assert (account.auth_token, revoked) == (AUTH_TOKEN, [])


def test_account__a_token_that_spells_the_token_used_with_a_ligature_is_refused(httpserver: HTTPServer,
                                                                               config: Config) -> None:
    # "\ufb03" is "ffi" in one character: casefolded, the answer's token holds the token used.
    used = "classfiletokenAFFIX123"
    httpserver.expect_request("/api/v2/user").respond_with_json({**ACCOUNT, "authToken": "xclassfiletokenA\ufb03X123"})
    with raises(ResponseError) as info:
        plexauth.get_token_details(dataclasses.replace(config, token=used))
    assert info.value.reason == "a token in it holds a secret the request sent (its password, code or token)"


def test_account__the_token_used_given_back_is_taken(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_json({**ACCOUNT, "authToken": TOKEN})
    assert plexauth.get_token_details(config).auth_token == TOKEN


@pytest.mark.parametrize("token", ["NEW\tTOKEN", " ", "NEW\nX-Evil: 1"])
def test_signin__a_token_that_cannot_travel_in_a_header_is_refused(fault_server: Any, token: str) -> None:
    server = fault_server(answer(http_answer(201, json.dumps({**ACCOUNT, "authToken": token}).encode())))
    with raises(ResponseError, match="'authToken' is missing or has the wrong type"):
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", PASSWORD)


def test_signin__a_token_that_cannot_be_revoked_is_said_so(fault_server: Any) -> None:
    def script(conn: socket.socket, request: Incoming) -> bool:
        if request.method == "DELETE":
            conn.sendall(http_answer(500))
        else:
            conn.sendall(http_answer(201, json.dumps({"id": "one", "authToken": AUTH_TOKEN}).encode()))
        return True

    server = fault_server(keep_alive(script))
    with raises(ResponseError) as info:
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", PASSWORD)
    assert info.value.reason == "'id' is missing or has the wrong type; the new token in it could not be revoked"


def test_signin__a_token_that_cannot_be_sent_is_said_so(fault_server: Any) -> None:
    server = fault_server(answer(http_answer(201, json.dumps({"id": 1, "authToken": "NEW\tTOKEN"}).encode())))
    with raises(ResponseError) as info:
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", PASSWORD)
    assert info.value.reason == ("'uuid' is missing or has the wrong type; the token in it could not be sent, "
                                 "so it could not be revoked")


# ===========================================================================
# Tests: PIN sign-in, ping and sign-out
# ===========================================================================


@pytest.mark.parametrize("xml", [False, True], ids=["json", "xml"])
def test_pin__created_pending_then_approved(httpserver: HTTPServer, config: Config, xml: bool) -> None:
    plex_tv = FakePlexTV(httpserver, pending=3, xml=xml)
    pin = plexauth.create_pin(config)
    assert (pin.id, pin.code, pin.client_identifier, pin.auth_token) == (1000, "A1B2", CLIENT_ID, None)
    assert pin.expires_at == plex_tv.pins[1000][2].replace(microsecond=pin.expires_at.microsecond) + (
        datetime.timedelta(seconds=1800)
    )
    assert pin.expires_at.tzinfo == datetime.timezone.utc
    assert pin.raw["expiresIn"] in (1800, "1800")
    assert plexauth.check_pin(config, pin).auth_token is None  # check 1 of 3 pending
    assert plexauth.wait_for_pin(config, pin, interval=1.0) == PIN_TOKEN
    # Checks 2 and 3 pending, 4 approved: the wait returned at the first check after approval.
    assert plex_tv.checks == 4
    approved = plexauth.check_pin(config, pin)
    assert approved.auth_token == PIN_TOKEN
    assert "auth_token='***'" in repr(approved)
    assert_no_secret(repr(approved) + str(approved))
    create, *checks = requests_seen(httpserver)
    assert (create.method, create.path, create.query_string, create.data) == ("POST", "/api/v2/pins", b"", b"")
    for request in (create, *checks):
        assert "X-Plex-Token" not in request.headers  # a PIN needs no token, and gets none
        assert request.headers["X-Plex-Client-Identifier"] == CLIENT_ID
        assert request.headers["X-Plex-Product"] == "plexauth"
    assert {(r.method, r.path) for r in checks} == {("GET", "/api/v2/pins/1000")}


def test_pin__strong_pin_and_its_auth_url(httpserver: HTTPServer, config: Config) -> None:
    FakePlexTV(httpserver)
    pin = plexauth.create_pin(config, strong=True)
    assert pin.code == "pj6rvq4k3lns1bcxfa2x0m9ye"
    assert requests_seen(httpserver)[0].args.to_dict() == {"strong": "true"}
    assert plexauth.pin_auth_url(config, pin) == (
        f"https://app.plex.tv/auth#?clientID={CLIENT_ID}&code=pj6rvq4k3lns1bcxfa2x0m9ye"
        "&context[device][product]=plexauth"
    )


def test_pin_auth_url__percent_encodes_every_value() -> None:
    config = Config("my box&id=1#x", product="Media Sync/2 ü")
    pin = Pin(id=1, code="c&d=e", client_identifier="my box&id=1#x")
    url = plexauth.pin_auth_url(config, pin, forward_url="https://example.com/done?a=1&b=2#top")
    assert url == (
        "https://app.plex.tv/auth#?clientID=my%20box%26id%3D1%23x&code=c%26d%3De"
        "&context[device][product]=Media%20Sync%2F2%20%C3%BC"
        "&forwardUrl=https%3A%2F%2Fexample.com%2Fdone%3Fa%3D1%26b%3D2%23top"
    )
    fragment = urllib.parse.urlsplit(url).fragment
    assert urllib.parse.parse_qs(fragment[1:]) == {
        "clientID": ["my box&id=1#x"], "code": ["c&d=e"], "context[device][product]": ["Media Sync/2 ü"],
        "forwardUrl": ["https://example.com/done?a=1&b=2#top"],
    }


def test_pin__expired_or_unknown_is_pin_expired_error(httpserver: HTTPServer, config: Config) -> None:
    plex_tv = FakePlexTV(httpserver, gone=True)
    pin = plexauth.create_pin(config)
    with raises(PinExpiredError) as info:
        plexauth.check_pin(config, pin)
    assert str(info.value) == (
        "GET /api/v2/pins/1000 failed with 404 Not Found: Code not found or expired (code 1020): "
        "PIN 1000 has expired, or plex.tv does not know it"
    )
    assert (info.value.method, info.value.path) == ("GET", "/api/v2/pins/1000")
    assert isinstance(info.value.__cause__, APIError)
    with raises(PinExpiredError):
        plexauth.wait_for_pin(config, pin)
    assert plex_tv.checks == 2  # one check each: a 404 is not retried, nor waited on


@pytest.mark.parametrize(
    ("interval", "timeout", "most"),
    [(0.01, 2.5, 3), (2.0, 3.0, 2)],
    ids=["floor-of-one-second", "interval"],
)
def test_wait_for_pin__at_most_one_check_per_interval(
    httpserver: HTTPServer, config: Config, interval: float, timeout: float, most: int
) -> None:
    # Counted by the server: checks spaced at least max(interval, 1 s) apart fit
    # at most `most` times into `timeout` (at 0.01 s it would be some 250).
    plex_tv = FakePlexTV(httpserver, pending=None)
    pin = plexauth.create_pin(config)
    with raises(PinExpiredError) as info:
        plexauth.wait_for_pin(config, pin, timeout=timeout, interval=interval)
    assert str(info.value) == f"PIN 1000 was not approved within {timeout:g} s"
    assert 1 <= plex_tv.checks <= most


def test_wait_for_pin__stops_at_the_pins_expiry(httpserver: HTTPServer, config: Config) -> None:
    plex_tv = FakePlexTV(httpserver, pending=None, lifetime=1.9)
    pin = plexauth.create_pin(config)
    with raises(PinExpiredError) as info:
        plexauth.wait_for_pin(config, pin, timeout=300, interval=1)
    # Stopped by the PIN's own expiresAt, before plex.tv had to say so.
    assert str(info.value) == (
        f"PIN 1000 expired at {pin.expires_at:%Y-%m-%d %H:%M:%S} UTC before it was approved"
    )
    assert 1 <= plex_tv.checks <= 2


def test_wait_for_pin__returns_a_token_already_there(httpserver: HTTPServer, config: Config) -> None:
    pin = Pin(id=5, code="A1B2", auth_token=PIN_TOKEN)
    assert plexauth.wait_for_pin(config, pin) == PIN_TOKEN
    assert httpserver.log == []


@pytest.mark.parametrize(
    ("call", "exc", "message"),
    [
        (lambda c: plexauth.check_pin(c, 1000), TypeError, "pin must be a plexauth.Pin (from create_pin), not int"),
        (lambda c: plexauth.check_pin(c, Pin(id="../user", code="x")), TypeError, "pin.id must be an int, not str"),
        (lambda c: plexauth.check_pin(c, Pin(id=1, code="x", client_identifier="other")), ValueError,
         "the PIN was created by client identifier 'other', not 'test-client-0001'"),
        (lambda c: plexauth.wait_for_pin(c, Pin(id=1, code="x"), timeout=0), ValueError,
         "timeout must be a positive number of seconds, got 0"),
        (lambda c: plexauth.wait_for_pin(c, Pin(id=1, code="x"), interval=float("nan")), ValueError,
         "interval must be a positive number of seconds, got nan"),
        (lambda c: plexauth.wait_for_pin(c, Pin(id=1, code="x"), timeout="300"), TypeError,
         "timeout must be a number of seconds, not str"),
        (lambda c: plexauth.pin_auth_url(c, Pin(id=1, code="")), ValueError, "pin.code must not be empty"),
        (lambda c: plexauth.pin_auth_url(c, Pin(id=1, code="x"), forward_url=b"x"), TypeError,
         "forward_url must be a str, not bytes"),
    ],
    ids=["not-a-pin", "id-not-int", "other-client", "timeout-0", "interval-nan", "timeout-str", "empty-code",
         "forward-bytes"],
)
def test_pin__wrong_arguments(httpserver: HTTPServer, config: Config, call: Any, exc: type, message: str) -> None:
    with raises(exc) as info:
        call(config)
    assert str(info.value).startswith(message)
    assert httpserver.log == []


def test_ping_and_sign_out(httpserver: HTTPServer, config: Config) -> None:
    plex_tv = FakePlexTV(httpserver)
    assert plexauth.ping(config) is None
    assert plexauth.sign_out(config) is None
    assert plex_tv.tokens == set()
    with raises(UnauthorizedError) as info:
        plexauth.ping(config)
    assert str(info.value) == (
        "GET /api/v2/ping failed with 401 Unauthorized: User could not be authenticated (code 1001)"
    )
    with raises(UnauthorizedError):
        plexauth.sign_out(config)
    ping, sign_out, *_ = requests_seen(httpserver)
    assert (ping.method, ping.path, sign_out.method, sign_out.path) == (
        "GET", "/api/v2/ping", "DELETE", "/api/v2/users/signout"
    )
    for request in (ping, sign_out):
        assert request.headers["X-Plex-Token"] == TOKEN
        assert TOKEN not in request.full_path
    assert len(httpserver.log) == 4  # a 401 is not retried


def test_pin__answer_for_another_client_or_without_a_code_is_a_response_error(fault_server: Any) -> None:
    for doc, reason in (({**PIN_DOC, "clientIdentifier": "someone-else"}, "the PIN is for another client identifier"),
                        ({**PIN_DOC, "code": ""}, "'code' is missing or has the wrong type")):
        server = fault_server(answer(http_answer(201, json.dumps(doc).encode())))
        with raises(ResponseError) as info:
            plexauth.create_pin(hostile_config(server.port))
        assert info.value.reason == reason


# ===========================================================================
# Tests: errors, for every operation
# ===========================================================================


@pytest.mark.parametrize(
    "exc",
    [
        PlexAuthError("boom", method="GET", path="/x"),
        APIError(500, method="GET", path="/api/v2/user", body=b"oops"),
        BadRequestError(400, 1000, "X-Plex-Client-Identifier is missing", method="GET", path="/api/v2/user"),
        UnauthorizedError(401, 1001, "User could not be authenticated", method="GET", path="/api/v2/user"),
        TwoFactorRequiredError(401, 1029, "Please enter the verification code", errors=({"code": 1029},)),
        RateLimitedError(429, 1003, "Slow down", retry_after=30.0, method="GET", path="/api/v2/user"),
        ResponseError("no token", status=200, method="GET", path="/security/token"),
        TransportError("timed out", method="GET", path="/security/token"),
        PinExpiredError("PIN 7 was not approved within 300 s"),
        plexauth.HomePinRequiredError(403, 1041, "Invalid PIN", method="POST", path="/api/v2/home/users/u/switch"),
        plexauth.ServerUnreachableError("no connection", method="GET", path="/identity",
                                        attempts=(("http://127.0.0.1:1", "refused"),)),
    ],
    ids=lambda exc: type(exc).__name__,
)
def test_errors__survive_pickle(exc: PlexAuthError) -> None:
    copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is type(exc)
    assert str(copy) == str(exc)
    assert copy.args == exc.args
    assert copy.__dict__ == exc.__dict__


def test_errors__hierarchy() -> None:
    assert issubclass(TwoFactorRequiredError, UnauthorizedError)
    for cls in (BadRequestError, UnauthorizedError, RateLimitedError):
        assert issubclass(cls, APIError)
    for cls in (APIError, ResponseError, TransportError, PinExpiredError):
        assert issubclass(cls, PlexAuthError)
    assert not issubclass(PinExpiredError, APIError)  # also raised with no answer: at a deadline


@pytest.mark.parametrize("op", PLEX_TV_OPS, ids=repr)
@pytest.mark.parametrize(("status", "body", "cls", "code", "message"), PLEX_TV_ERRORS,
                         ids=[plex_tv_error_id(c) for c in PLEX_TV_ERRORS])
def test_errors__plex_tv_bodies(
    httpserver: HTTPServer, config: Config, op: Op, status: int, body: bytes, cls: type, code: Any, message: Any
) -> None:
    expect(httpserver, op).respond_with_data(body, status=status)
    with raises(APIError) as info:
        op.call(config)
    exc = info.value
    assert type(exc) is cls
    assert (exc.status, exc.code, exc.message) == (status, code, message)
    assert (exc.method, exc.path) == (op.method, op.path)
    assert exc.body == body
    # Python's phrases change between versions (422 is "Unprocessable Content" from 3.13 on).
    expected = f"{op.method} {op.path} failed with {status} {http.HTTPStatus(status).phrase}"
    if message:
        expected += f": {message}"
    if code is not None:
        expected += f" (code {code})"
    assert str(exc) == expected
    assert len(httpserver.log) == 1  # no error here is retried


@pytest.mark.parametrize("op", [op for op in OPS if op.name not in STATUS_ONLY], ids=repr)
@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"not json", "the body is neither a JSON object or list nor XML"),
        (b"null", "the body is neither a JSON object or list nor XML"),
        (b"", "the body is empty"),
        (b"{}", "missing"),
        (b"<html><body>OK</body></html>", "missing"),
        (b'{"MediaContainer": []}', "missing"),
    ],
    ids=["text", "null", "empty", "empty-object", "html", "container-list"],
)
def test_errors__undecodable_2xx(httpserver: HTTPServer, config: Config, op: Op, body: bytes, reason: str) -> None:
    expect(httpserver, op).respond_with_data(body, status=201 if op.method == "POST" else 200)
    if op.name in ("resources", "home-users") and body.startswith(b'{"MediaContainer"'):
        assert op.call(config) == ()  # an empty list, in plex.tv's older wrapper
        return
    with raises(ResponseError) as info:
        op.call(config)
    assert str(info.value).startswith(f"{op.method} {op.path} answered 20")
    if reason == "missing":  # what is missing: the container of a server's answer, the list, or the model's id
        reason = {"resources": "no 'resource' or 'Device' list", "home-users": "no 'users' or 'user' or 'User' list",
                  "jwt": "'nonce' is missing or not a string", "jwt-keys": "'keys' is missing or not a list",
                  }.get(op.name, "'MediaContainer' is missing" if op.path.startswith("/security")
                        else "'id' is missing or has the wrong type")
    assert info.value.reason == reason


def test_errors__entries_kept(httpserver: HTTPServer, config: Config) -> None:
    body = {"errors": [{"code": 1001, "message": "first", "status": 401}, {"code": 7, "message": "second"}]}
    httpserver.expect_request("/api/v2/user").respond_with_json(body, status=401)
    with raises(UnauthorizedError) as info:
        plexauth.get_token_details(config)
    assert info.value.errors == tuple(body["errors"])


@pytest.mark.parametrize("op", PMS_OPS, ids=repr)
@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [
        (401, b"<html><head><title>Unauthorized</title></head><body><h1>401 Unauthorized</h1></body></html>",
         "text/html"),
        (401, b"", "text/html"),
        (403, b"<!DOCTYPE html><html><body>Forbidden</body></html>", "text/html"),
        (403, b"", "text/plain"),
    ],
    ids=["401-html", "401-empty", "403-html", "403-empty"],
)
def test_errors__pms_unauthorized(
    httpserver: HTTPServer, config: Config, op: Op, status: int, body: bytes, content_type: str
) -> None:
    expect(httpserver, op).respond_with_data(body, status=status, content_type=content_type)
    with raises(UnauthorizedError) as info:
        op.call(config)
    phrase = {401: "Unauthorized", 403: "Forbidden"}[status]
    assert str(info.value) == f"GET {op.path} failed with {status} {phrase}"
    assert (info.value.status, info.value.code, info.value.message) == (status, None, None)


@pytest.mark.parametrize("op", PMS_OPS, ids=repr)
def test_errors__pms_bad_request(httpserver: HTTPServer, config: Config, op: Op) -> None:
    expect(httpserver, op).respond_with_data("<html><body>Bad Request</body></html>", status=400)
    with raises(BadRequestError) as info:
        op.call(config)
    assert str(info.value) == f"GET {op.path} failed with 400 Bad Request"


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_errors__rate_limited_with_retry_after(httpserver: HTTPServer, config: Config, op: Op) -> None:
    # 120 s is past the cap: the call gives up at once and says when to come back.
    body = b'{"errors":[{"code":1003,"message":"Rate limit exceeded","status":429}]}'
    expect(httpserver, op).respond_with_data(body, status=429, headers={"Retry-After": "120"})
    with raises(RateLimitedError) as info:
        op.call(config)
    exc = info.value
    assert (exc.status, exc.code, exc.message, exc.retry_after) == (429, 1003, "Rate limit exceeded", 120.0)
    assert str(exc) == (
        f"{op.method} {op.path} failed with 429 Too Many Requests: Rate limit exceeded (code 1003); retry after 120 s"
    )
    assert len(httpserver.log) == 1


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 -0000"}, 0.0),
    ],
    ids=["absent", "garbage", "past-date", "past-date-no-zone"],
)
def test_errors__rate_limited_retry_after_forms(
    httpserver: HTTPServer, config: Config, header: dict[str, str], expected: Any
) -> None:
    httpserver.expect_request("/api/v2/users/signin").respond_with_data("", status=429, headers=header)
    with raises(RateLimitedError) as info:
        plexauth.post_users_sign_in_data(config, "me", PASSWORD)
    assert info.value.retry_after == expected


def test_errors__rate_limited_future_http_date_is_past_cap(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_data(
        "", status=429, headers={"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"}
    )
    with raises(RateLimitedError) as info:
        plexauth.get_token_details(config)
    assert info.value.retry_after is not None
    assert info.value.retry_after > plexauth.MAX_RETRY_WAIT_SECONDS
    assert len(httpserver.log) == 1


def test_errors__code_1003_without_429(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_json(
        {"errors": [{"code": 1003, "message": "Too many"}]}, status=400
    )
    with raises(RateLimitedError):
        plexauth.get_token_details(config)


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_errors__server_errors(httpserver: HTTPServer, config: Config, op: Op, status: int) -> None:
    expect(httpserver, op).respond_with_data("down", status=status, headers={"Retry-After": "0"})
    with raises(APIError) as info:
        op.call(config)
    assert type(info.value) is APIError
    assert info.value.status == status
    retried = op.method == "GET" and status != 500
    assert len(httpserver.log) == (config.retries + 1 if retried else 1)


def test_errors__unknown_status_phrase(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_data("", status=599)
    with raises(APIError) as info:
        plexauth.get_token_details(config)
    assert str(info.value) == "GET /api/v2/user failed with 599"


def test_errors__secrets_too_long_to_look_for_withhold_the_error(fault_server: Any) -> None:
    # A JWT (its parts are looked for too), a password and a code of 8 KiB each: over 32 KiB of
    # secrets, whose forms would take seconds to look for in the error's text: it is withheld.
    def script(conn: socket.socket, request: Incoming) -> bool:
        conn.sendall(http_answer(401, json.dumps({"errors": [{"code": 1001, "message": "bad password"}]}).encode()))
        return True

    server = fault_server(keep_alive(script))
    jwt = "eyJ" + "a" * 2700 + "." + "b_" * 1350 + "." + "c-" * 1350
    started = time.monotonic()
    with raises(UnauthorizedError) as info:
        plexauth.post_users_sign_in_data(hostile_config(server.port, token=jwt), "me", "p" * 8000,
                                         verification_code="1" * 8000)
    assert time.monotonic() - started < 5  # milliseconds here
    assert (info.value.status, info.value.message, info.value.body) == (401, None, b"")
    assert str(info.value) == "POST /api/v2/users/signin failed with 401 Unauthorized"


def test_errors__error_body_is_cut_after_masking(httpserver: HTTPServer, config: Config) -> None:
    kept = 16 * 1024  # .body keeps the first 16 KiB (README, Errors)
    body = b"x" * (kept - 5) + TOKEN.encode() + b"y" * (kept - 100)  # read whole: under twice what is kept
    httpserver.expect_request("/api/v2/user").respond_with_data(body, status=500)
    with raises(APIError) as info:
        plexauth.get_token_details(config)
    assert info.value.status == 500
    assert info.value.body == b"x" * (kept - 5) + b"***yy"


@pytest.mark.parametrize("form", ["raw", "spaced", "references", "padded-references", "escaped-references"])
def test_errors__a_body_read_only_in_part_is_not_kept(httpserver: HTTPServer, config: Config, form: str) -> None:
    # Only the start of an error body is read (32 KiB): a token echoed across that end is not
    # whole there, so no masking can find it, in whatever form, however long: none of it is kept.
    echoed = {"raw": TOKEN, "spaced": " ".join(TOKEN), "references": "".join(f"&#{ord(c)};" for c in TOKEN),
              "padded-references": "".join(f"&#{'0' * 1000}{ord(c)};" for c in TOKEN),
              "escaped-references": "".join(f"%26#{'0' * 20}{ord(c)};" for c in TOKEN)}[form]
    for encoding in ("utf-8", "utf-16"):
        width = 1 if encoding == "utf-8" else 2
        text = "\ufeff" + "." * max(100, (2 * 16 * 1024 - 3) // width - len(echoed) // 2) + echoed + "y" * 100
        httpserver.clear()
        httpserver.expect_request("/api/v2/user").respond_with_data(
            text.encode("utf-16-le") if encoding == "utf-16" else text.encode(), status=500,
            content_type=f"text/plain; charset={encoding}")
        with raises(APIError) as info:
            plexauth.get_token_details(config)
        assert (info.value.body, info.value.errors, info.value.message) == (b"", (), None)


def test_errors__a_long_code_of_digits_echoed_as_a_float_is_withheld(httpserver: HTTPServer, config: Config) -> None:
    # Python writes a float of 1e16 or more with an exponent: no raw match, read as a number.
    code = "12345678901234568"
    body = {"errors": [{"code": 1029, "message": "Invalid code", "given": float(code)}]}
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(body, status=401)
    with raises(TwoFactorRequiredError) as info:
        plexauth.post_users_sign_in_data(config, "user", "password", verification_code=code)
    assert (info.value.errors[0]["given"], info.value.body) == ("***", b"")


def test_errors__a_password_of_other_digits_is_no_number(httpserver: HTTPServer, config: Config) -> None:
    # str.isdigit() holds for superscripts: such a password is text, never read as a number.
    body = {"errors": [{"code": 1001, "message": "User could not be authenticated", "status": 401}]}
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(body, status=401)
    for password in ("\u00b2\u00b3\u2074\u2075", "0\u00b2", "0" + "1" * 4400, "1" * 4400):  # int() takes 4300
        with raises(UnauthorizedError) as info:
            plexauth.post_users_sign_in_data(config, "user", password)
        assert info.value.code == 1001


def test_errors__oversized_body(httpserver: HTTPServer, config: Config) -> None:
    body = b"{" + b" " * plexauth.MAX_BODY_BYTES + b"}"
    httpserver.expect_request("/api/v2/user").respond_with_data(body)
    with raises(ResponseError, match=f"the body is larger than {plexauth.MAX_BODY_BYTES} bytes"):
        plexauth.get_token_details(config)


# ===========================================================================
# Tests: retries
# ===========================================================================


@pytest.mark.parametrize(
    "retry_after",
    ["0", "Wed, 21 Oct 2015 07:28:00 GMT"],
    ids=["seconds", "http-date"],
)
def test_retries__retry_after_is_honoured(httpserver: HTTPServer, config: Config, retry_after: str) -> None:
    httpserver.expect_ordered_request("/api/v2/user").respond_with_data(
        "", status=503, headers={"Retry-After": retry_after}
    )
    httpserver.expect_request("/api/v2/user").respond_with_json(ACCOUNT)
    assert plexauth.get_token_details(config).username == "Username"
    assert len(httpserver.log) == 2


@pytest.mark.parametrize("retry_after", ["99999999999999999999", "31", "Fri, 01 Jan 2100 00:00:00 GMT"])
def test_retries__absurd_retry_after_is_not_waited_for(httpserver: HTTPServer, config: Config, retry_after: str):
    httpserver.expect_request("/api/v2/user").respond_with_data("", status=503, headers={"Retry-After": retry_after})
    with raises(APIError) as info:
        plexauth.get_token_details(config)
    assert info.value.status == 503
    assert len(httpserver.log) == 1


@pytest.mark.parametrize("op", GET_OPS, ids=repr)
def test_retries__get_succeeds_after_503_and_429(httpserver: HTTPServer, config: Config, op: Op) -> None:
    body = {"/security/token": {"MediaContainer": {"token": TRANSIENT}}, "/security/resources": SOURCE,
            "/api/v2/user": ACCOUNT, "/api/v2/pins/7": {"id": 7, "code": "ABCD"}, "/api/v2/ping": {},
            "/api/v2/resources": RESOURCES, "/api/v2/home/users": HOME_USERS, "/api/v2/auth/nonce": {"nonce": "n-1"},
            **({"/api/v2/auth/keys": {"keys": [plex_signing_jwk()]}} if HAVE_CRYPTOGRAPHY else {})}[op.path]
    if op.name == "jwt":  # the token follows the nonce
        httpserver.expect_request("/api/v2/auth/token", method="POST").respond_with_json({"auth_token": op_jwt()})
    # Ordered handlers answer first, in turn; then the permanent one.
    httpserver.expect_ordered_request(op.path).respond_with_data("", status=503, headers={"Retry-After": "0"})
    httpserver.expect_ordered_request(op.path).respond_with_data("", status=429, headers={"Retry-After": "0"})
    expect(httpserver, op).respond_with_json(body)
    result = op.call(config)
    assert (result is None) == (op.name in STATUS_ONLY)
    assert len(httpserver.log) == 3 + (op.name == "jwt")


def test_retries__zero_means_one_try(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_data("", status=503)
    with raises(APIError):
        plexauth.get_token_details(dataclasses.replace(config, retries=0))
    assert len(httpserver.log) == 1


@pytest.mark.parametrize("date", ["Mon, 01 Jan 2024 00:00:00 +99999999999999", "Mon, 01 Jan 99999999 00:00:00 GMT",
                                  "Mon, 01 Jan 2024 99999999999:00:00 GMT"])
def test_retries__retry_after_dates_no_calendar_has(fault_server: Any, date: str) -> None:
    server = fault_server(keep_alive(lambda conn, request: conn.sendall(
        http_answer(503, b"", {"Retry-After": date})) is None))
    with raises(APIError) as info:
        plexauth.get_token_details(hostile_config(server.port, retries=1))
    assert info.value.status == 503


# ===========================================================================
# Tests: redirects
# ===========================================================================


@pytest.mark.parametrize("location", ["/api/v2/user", "ftp://127.0.0.1/x"], ids=["loop", "ftp"])
def test_redirects__not_followed_forever_or_elsewhere(httpserver: HTTPServer, config: Config, location: str) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_data("", status=302, headers={"Location": location})
    with raises(APIError) as info:
        plexauth.get_token_details(config)
    assert info.value.status == 302
    assert len(httpserver.log) == (6 if location == "/api/v2/user" else 1)


def test_redirects__unparsable_location(fault_server: Any) -> None:
    server = fault_server(answer(b"HTTP/1.1 302 Found\r\nLocation: http://[::1\r\nContent-Length: 0\r\n\r\n"))
    with raises(APIError) as info:
        plexauth.get_token_details(fault_config(server.port))
    assert info.value.status == 302
    assert server.connections == 1


# ===========================================================================
# Tests: transport failures
# ===========================================================================


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize(
    ("handler", "reason"),
    [(reset, "the connection to {} broke ("), (garbage, "the connection to {} broke ("),
     (silent, "{} sent nothing for 0.5 s (timed out)"), (short_body, "the connection to {} broke (")],
    ids=["reset", "garbage", "stall", "short-body"],
)
def test_transport__faults_become_transport_error(fault_server: Any, op: Op, handler: Any, reason: str) -> None:
    server = fault_server(handler)
    with raises(TransportError) as info:  # a cut body too, on urllib3 1.26 as on 2.x
        op.call(fault_config(server.port))
    # What happened, and where: scheme, host and port, never the path.
    assert info.value.reason.startswith(reason.format(f"http://127.0.0.1:{server.port}"))
    # urllib3's and the socket's exceptions may quote the server: none rides along.
    assert (info.value.__cause__, info.value.__context__) == (None, None)
    assert str(info.value).startswith(f"{op.method} {op.path} ")
    assert server.connections == 1


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_transport__connection_refused(op: Op) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with raises(TransportError) as info:
        op.call(fault_config(port))
    assert info.value.reason == f"http://127.0.0.1:{port} refused the connection"
    assert str(info.value) == f"{op.method} {op.path} could not complete: {info.value.reason}"


def test_transport__unknown_host_name_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    # The resolver's answer for a name that does not exist, without asking a
    # name server (tests never leave this machine).
    real = socket.getaddrinfo

    def resolve(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host == "plex.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    config = Config(CLIENT_ID, token=TOKEN, plex_tv_url="https://plex.invalid:8443/api/v2", retries=0)
    with raises(TransportError) as info:
        plexauth.get_token_details(config)
    assert info.value.reason.startswith("the host name of https://plex.invalid:8443 was not found (")


@pytest.mark.parametrize("status", [200, 500])
def test_transport__broken_content_encoding(fault_server: Any, status: int) -> None:
    server = fault_server(
        answer(f"HTTP/1.1 {status} X\r\nContent-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello".encode())
    )
    with raises((ResponseError, APIError)) as info:
        plexauth.get_token_details(fault_config(server.port))
    if status == 200:
        assert isinstance(info.value, ResponseError)
        assert info.value.reason == "the body does not match its Content-Encoding"
    else:
        assert type(info.value) is APIError
        assert (info.value.status, info.value.body) == (500, b"")


def test_transport__get_retried_after_reset_but_sign_in_not(fault_server: Any) -> None:
    server = fault_server(reset)
    with raises(TransportError):
        plexauth.get_token_details(fault_config(server.port, retries=1))
    assert server.connections == 2
    with raises(TransportError):
        plexauth.post_users_sign_in_data(fault_config(server.port, retries=1), "me", PASSWORD)
    assert server.connections == 3


@pytest.mark.parametrize("op", OPS, ids=repr)
def test_transport__reset_mid_body(fault_server: Any, op: Op) -> None:
    server = fault_server(reset_mid_body)
    with raises(TransportError) as info:
        op.call(fault_config(server.port))
    assert info.value.reason.startswith(f"the connection to http://127.0.0.1:{server.port} broke (")
    server.close()
    assert server.connections == 1


def test_transport__stall_ends_after_each_try_times_out(fault_server: Any) -> None:
    # The bound: every try ends at its read timeout, and there are retries + 1
    # of them for a GET (with 0.5 s and 1 s of backoff between), one for the POST.
    server = fault_server(silent)
    config = dataclasses.replace(fault_config(server.port, retries=2), timeout=0.25)
    with raises(TransportError) as info:
        plexauth.get_token_details(config)
    assert info.value.reason == f"http://127.0.0.1:{server.port} sent nothing for 0.25 s (timed out)"
    with raises(TransportError) as info:
        plexauth.post_users_sign_in_data(config, "me", PASSWORD)
    assert info.value.reason == f"http://127.0.0.1:{server.port} sent nothing for 0.25 s (timed out)"
    server.close()
    assert server.connections == 3 + 1


def test_transport__endless_body_stops_at_the_cap(fault_server: Any) -> None:
    sent = [0]

    def endless(conn: socket.socket, done: threading.Event) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n[")
        chunk = b"0," * 32768
        while not done.is_set():  # until the client hangs up (sendall then fails)
            conn.sendall(chunk)
            sent[0] += len(chunk)

    server = fault_server(endless)
    tracemalloc.start()
    try:
        with raises(ResponseError) as info:
            plexauth.get_token_details(fault_config(server.port))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.reason == f"the body is larger than {plexauth.MAX_BODY_BYTES} bytes"
    server.close()
    assert sent[0] > plexauth.MAX_BODY_BYTES  # the server really sent more than the cap...
    assert peak < 2 * plexauth.MAX_BODY_BYTES  # ...and the client held at most about the cap
    assert server.connections == 1


def test_transport__https_to_plain_http_is_tls_failure(httpserver: HTTPServer) -> None:
    url = httpserver.url_for("").replace("http://", "https://")
    config = Config(CLIENT_ID, token=TOKEN, server_url=url, retries=0)
    with raises(TransportError) as info:
        plexauth.get_transient_token(config)
    assert info.value.reason.startswith(f"TLS with https://127.0.0.1:{httpserver.port} failed (")


def test_transport__module_pool_per_tls_setting(httpserver: HTTPServer, config: Config, tls_server: Any,
                                                tmp_path: Any) -> None:
    httpserver.expect_request("/security/token").respond_with_json({"MediaContainer": {"token": TRANSIENT}})
    server, bundle = tls_server
    for verify in (True, bundle):
        assert plexauth.get_transient_token(dataclasses.replace(config, verify=verify)) == TRANSIENT
    assert plexauth._pools[True] is not plexauth._pools[bundle]
    empty = tmp_path / "ca.pem"
    empty.write_text("")  # a file, but no CA bundle: found when a TLS connection needs it
    https = dataclasses.replace(config, verify=str(empty), retries=0, server_url=server.url_for(""))
    with raises(TransportError, match=r"TLS with https://127.0.0.1:\d+ failed \(.*no certificate"):
        plexauth.get_transient_token(https)


def test_transport__describes_unknown_failures() -> None:
    # No fault server produces a bare urllib3 HTTPError; the core still names it.
    failure = plexauth._describe(urllib3.exceptions.HTTPError("x"), "https://h/p?q=1", 1.0)
    assert failure == "the connection to https://h:443 failed (HTTPError)"
    # Nor a connect timeout (a loopback connect never takes long), nor a connect failure other than refused.
    unreachable = urllib3.exceptions.NewConnectionError(None, "x")
    unreachable.__cause__ = OSError(101, "Network is unreachable")  # ENETUNREACH
    assert plexauth._describe(unreachable, "http://[::1]:8/", 1.0) == \
        "could not connect to http://[::1]:8 (Network is unreachable)"
    slow = urllib3.exceptions.ConnectTimeoutError(None, "x")
    assert plexauth._describe(slow, "https://h", 2.5) == "connecting to https://h:443 timed out after 2.5 s"


# ===========================================================================
# Tests: TLS
# ===========================================================================


def test_tls__verified_by_default(tls_server: Any) -> None:
    server, _bundle = tls_server
    with raises(TransportError) as info:
        plexauth.get_transient_token(tls_config(server))
    assert info.value.reason.startswith(f"the TLS certificate of https://127.0.0.1:{server.port} is not trusted (")


def test_tls__custom_ca_bundle(tls_server: Any) -> None:
    server, bundle = tls_server
    assert plexauth.get_transient_token(tls_config(server, verify=bundle)) == TRANSIENT


def test_tls__verify_false_works_and_warns(tls_server: Any) -> None:
    server, _bundle = tls_server
    with pytest.warns(urllib3.exceptions.InsecureRequestWarning):
        assert plexauth.get_transient_token(tls_config(server, verify=False)) == TRANSIENT


# ===========================================================================
# Tests: threads and headers
# ===========================================================================


def test_threads__one_config_shared_by_8_threads(config: Config) -> None:
    server = CountingServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    config = dataclasses.replace(config, server_url=f"http://127.0.0.1:{server.server_address[1]}")
    threads, calls = THREADS, CALLS_PER_THREAD
    start = threading.Barrier(threads)
    wrong: list[Any] = []

    def work(n: int) -> None:
        start.wait()
        for i in range(calls):
            source = f"server://thread-{n}-call-{i}"
            try:
                info = plexauth.get_source_connection_information(config, source)
            except Exception as exc:  # collected, asserted below
                wrong.append(exc)
            else:
                if info.name != source or info.access_token != ACCESS_TOKEN or len(info.connections) != 1:
                    wrong.append(info.name)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    plexauth._pools[True].clear()  # closes the kept-alive connections, ending their server threads
    server.shutdown()
    server.server_close()
    assert wrong == []
    assert server.requests == threads * calls
    # One pool of keep-alive connections: at most one per thread, not one per call.
    assert 1 <= server.connections <= threads


def test_headers__all_config_fields_sent(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/security/token").respond_with_json({"MediaContainer": {"token": TRANSIENT}})
    config = dataclasses.replace(
        config, product="Cron", version="9.9", platform="Linux", platform_version="6.1", device="PC",
        device_name="Wohnzimmer-Gerät", model="x86", device_vendor="ACME", marketplace="googlePlay",
    )
    plexauth.get_transient_token(config)
    (request,) = requests_seen(httpserver)
    sent = {k: v.encode("latin-1").decode("utf-8") for k, v in request.headers.items() if k.startswith("X-Plex")}
    assert sent == {
        "X-Plex-Client-Identifier": CLIENT_ID,
        "X-Plex-Product": "Cron",
        "X-Plex-Version": "9.9",
        "X-Plex-Platform": "Linux",
        "X-Plex-Platform-Version": "6.1",
        "X-Plex-Device": "PC",
        "X-Plex-Device-Name": "Wohnzimmer-Gerät",
        "X-Plex-Model": "x86",
        "X-Plex-Device-Vendor": "ACME",
        "X-Plex-Marketplace": "googlePlay",
        "X-Plex-Token": TOKEN,
    }


def test_headers__no_token_when_none(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_json({"errors": [{"code": 1001}]}, status=401)
    with raises(UnauthorizedError):
        plexauth.get_token_details(dataclasses.replace(config, token=None))
    (request,) = requests_seen(httpserver)
    assert "X-Plex-Token" not in request.headers


# ===========================================================================
# Tests: arguments
# ===========================================================================


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: plexauth.ping("tok"), "config must be a plexauth.Config, not str"),
        (lambda: plexauth.get_token_details(None), "config must be a plexauth.Config, not NoneType"),
        (lambda: plexauth.pin_auth_url("x", Pin(id=1, code="A")), "config must be a plexauth.Config, not str"),
        (lambda: plexauth.get_source_connection_information(Config(CLIENT_ID), "server://x", refresh="no"),
         "refresh must be a bool, not str"),
        (lambda: plexauth.create_pin(Config(CLIENT_ID), strong=1), "strong must be a bool, not int"),
        (lambda: plexauth.post_users_sign_in_data(Config(CLIENT_ID), "me", "pw", remember_me=None),
         "remember_me must be a bool, not NoneType"),
    ],
    ids=["ping-str", "details-none", "auth-url", "refresh", "strong", "remember-me"],
)
def test_arguments__wrong_types_are_type_errors_naming_them(call: Any, message: str) -> None:
    with raises(TypeError) as info:
        call()
    assert str(info.value) == message


# ===========================================================================
# Tests: secrets
# ===========================================================================


def test_secrets__never_shown(httpserver: HTTPServer, config: Config, caplog: pytest.LogCaptureFixture) -> None:
    # The server echoes the secrets JSON-escaped, raw, form-encoded and XML-escaped.
    form = urllib.parse.urlencode({"password": PASSWORD})
    echo = json.dumps({"errors": [{"code": 1001, "message": f"bad {TOKEN} {PASSWORD} {CODE} {form}"}]})
    attribute = PASSWORD.replace("&", "&amp;").replace("<", "&lt;").replace('"', "&quot;")
    bodies = [
        echo,
        f"{TOKEN} {PASSWORD} {form}",
        f'<errors><error code="1001" message="{attribute} {TOKEN}"/></errors>',
        "<errors><error>" + PASSWORD.replace("&", "&amp;").replace("<", "&lt;") + "</error></errors>",
    ]
    for body in bodies:
        httpserver.expect_ordered_request("/api/v2/users/signin").respond_with_data(body, status=401)
    # GET /user never sent the password, so only its token can come back.
    token_echo = json.dumps({"errors": [{"code": 1001, "message": f"bad token {TOKEN}"}]})
    httpserver.expect_request("/api/v2/user").respond_with_data(token_echo, status=401)
    caught = []
    calls = [lambda: plexauth.post_users_sign_in_data(config, "me", PASSWORD, verification_code=CODE)] * len(bodies)
    for call in [*calls, lambda: plexauth.get_token_details(config)]:
        with raises(UnauthorizedError) as info:
            call()
        caught.append(info.value)
    for exc in caught:
        for text in (str(exc), repr(exc), repr(exc.args), repr(exc.errors), exc.body.decode("utf-8", "replace"),
                     pickle.dumps(exc).decode("utf-8", "replace")):
            assert_no_secret(text)
        assert "***" in exc.body.decode("utf-8")
    assert_no_secret(repr(config))
    assert_no_secret(str(config))
    assert "token='***'" in repr(config)
    assert any(record.name == "plexauth" for record in caplog.records)
    for request in requests_seen(httpserver):
        assert_no_secret(request.full_path)


def test_secrets__server_made_secrets_masked_in_error_body(
    httpserver: HTTPServer, config: Config, account_body: tuple[str, str]
) -> None:
    body, _ = account_body
    # A 500 that carries an account (a cut one too): its tokens are masked in .body.
    for cut in (len(body), body.index(AUTH_TOKEN) + 5):
        httpserver.expect_ordered_request("/api/v2/user").respond_with_data(body[:cut], status=500)
        with raises(APIError) as info:
            plexauth.get_token_details(dataclasses.replace(config, retries=0))
        assert b"***" in info.value.body
        assert b"Username" in info.value.body  # only the secrets go


def test_secrets__debug_log_lines(httpserver: HTTPServer, config: Config, caplog: pytest.LogCaptureFixture) -> None:
    httpserver.expect_request("/security/token").respond_with_json({"MediaContainer": {"token": TRANSIENT}})
    plexauth.get_transient_token(config)
    (record,) = [r for r in caplog.records if r.name == "plexauth"]
    assert record.levelno == logging.DEBUG
    assert record.getMessage().startswith("GET /security/token -> 200 (")


def test_secrets__redirect_to_other_port_drops_token(
    httpserver: HTTPServer, other_server: HTTPServer, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    other_server.expect_request("/api/v2/user").respond_with_json(ACCOUNT)
    httpserver.expect_request("/api/v2/user").respond_with_data(
        "", status=302, headers={"Location": other_server.url_for("/api/v2/user")}
    )
    plexauth.get_token_details(config)
    (first,) = requests_seen(httpserver)
    (second,) = requests_seen(other_server)
    assert first.headers["X-Plex-Token"] == TOKEN
    assert "X-Plex-Token" not in second.headers
    assert second.headers["X-Plex-Client-Identifier"] == CLIENT_ID
    assert_no_secret(second.full_path)
    assert "GET /api/v2/user: redirected to another origin; X-Plex-Token not forwarded" in caplog.messages


def test_secrets__redirect_on_same_origin_keeps_token(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_data("", status=301, headers={"Location": "/api/v2/me"})
    httpserver.expect_request("/api/v2/me").respond_with_json(ACCOUNT)
    plexauth.get_token_details(config)
    assert [r.headers.get("X-Plex-Token") for r in requests_seen(httpserver)] == [TOKEN, TOKEN]


def test_secrets__redirect_to_other_host_drops_token(
    httpserver: HTTPServer, other_server: HTTPServer, config: Config
) -> None:
    # Same machine, other host name: still another origin.
    other_server.expect_request("/api/v2/user").respond_with_json(ACCOUNT)
    location = other_server.url_for("/api/v2/user").replace("127.0.0.1", "localhost")
    httpserver.expect_request("/api/v2/user").respond_with_data("", status=307, headers={"Location": location})
    plexauth.get_token_details(config)
    (second,) = requests_seen(other_server)
    assert "X-Plex-Token" not in second.headers
    assert second.headers["Host"].startswith("localhost:")


def test_secrets__redirect_to_https_drops_token(httpserver: HTTPServer, config: Config, tls_server: Any) -> None:
    server, bundle = tls_server
    before = len(server.log)
    httpserver.expect_request("/security/token").respond_with_data(
        "", status=308, headers={"Location": server.url_for("/security/token")}
    )
    assert plexauth.get_transient_token(dataclasses.replace(config, verify=bundle)) == TRANSIENT
    (request,) = [request for request, _ in server.log[before:]]
    assert "X-Plex-Token" not in request.headers
    assert requests_seen(httpserver)[0].headers["X-Plex-Token"] == TOKEN


def test_secrets__every_format_character_is_looked_through() -> None:
    # Unicode's format characters (Cf) show nothing: masking drops each, as it drops gaps.
    invisible = re.compile("[" + plexauth._INVISIBLE + "]")
    shown = [f"U+{code:04X}" for code in range(sys.maxunicode + 1)
             if unicodedata.category(chr(code)) == "Cf" and not invisible.fullmatch(chr(code))]
    assert shown == []


def test_secrets__the_checker_sees_every_form() -> None:
    # The suite's own checker would notice each echo form (so that passing means something).
    for secret in (TOKEN, PASSWORD, CODE):
        for form, text in echo_forms(secret).items():
            with pytest.raises(AssertionError):
                assert_no_secret(f"before {text} after")
            shown = f"before {text} after"
            assert plexauth._shown(shown, (secret,)) != shown, form


# ===========================================================================
# Tests: whatever the server sends
# ===========================================================================


@pytest.mark.parametrize("op", OPS, ids=repr)
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(answer=answers)
def test_property__any_answer_gives_model_or_plexauth_error(scripted_server: Any, op: Op, answer: Any) -> None:
    server, current = scripted_server
    current.update(answer)
    url = server.url_for("").rstrip("/")
    config = Config(CLIENT_ID, token=TOKEN, server_url=url, plex_tv_url=url + "/api/v2", clients_url=url + "/api/v2",
                    retries=0, timeout=5.0)
    try:
        result = op.call(config)
    except PlexAuthError as exc:
        error: PlexAuthError | None = exc
    else:
        error = None
        assert 200 <= answer["status"] < 300
        if op.name in STATUS_ONLY:
            assert result is None
        else:
            assert isinstance(result, (str, plexauth.SourceConnectionInformation, plexauth.UserPlexAccount, Pin, tuple,
                                       plexauth.PlexJWT))
            if isinstance(result, tuple):  # a list of resources or Home users
                assert all(isinstance(item, (plexauth.Resource, plexauth.HomeUser)) for item in result)
    if error is not None:
        # The secrets this request sent, and those a server puts under secret keys.
        sent = (TOKEN, PASSWORD, CODE) if op.name == "signin" else (TOKEN,)
        server_made = (AUTH_TOKEN, ACCESS_TOKEN, SERVICE_TOKEN, SERVICE_SECRET, PIN_TOKEN, "CANARY-hashed-pin")
        sweep(error, (*sent, *server_made))
        assert str(error).startswith(f"{op.method} {op.path} ")


IDENTITY = {"MediaContainer": {"size": 0, "machineIdentifier": "machine-1", "version": "1.40"}}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(answer=answers, identity=st.booleans())
def test_property__connect_gives_the_server_or_unreachable(scripted_server: Any, answer: Any,
                                                           identity: bool) -> None:
    server, current = scripted_server
    current.update(answer)
    if identity:  # the right identity, under whatever status and headers were drawn
        current["body"] = json.dumps(IDENTITY).encode()
    url = server.url_for("").rstrip("/")
    config = Config(CLIENT_ID, token=TOKEN, server_url="http://127.0.0.1:1", retries=0, timeout=5.0)
    seen = len(server.log)
    try:
        chosen = plexauth.connect(config, server_resource(plexauth.Connection(uri=url, local=True)))
    except plexauth.ServerUnreachableError as exc:
        ((tried, reason),) = exc.attempts
        assert tried == url
        assert reason
        sweep(exc, (TOKEN, AUTH_TOKEN, ACCESS_TOKEN, SERVICE_TOKEN, SERVICE_SECRET, PIN_TOKEN, "CANARY-hashed-pin"))
    else:
        assert 200 <= answer["status"] < 300
        assert (chosen.server_url, chosen.token) == (url, ACCESS_TOKEN)
    probes = server.log[seen:]
    assert len(probes) == 1  # one probe, no redirect followed, no retry
    assert "X-Plex-Token" not in probes[0][0].headers


# ===========================================================================
# Tests: hostile servers
# ===========================================================================


def test_hostile__no_answer_meant_for_another_request(fault_server: Any) -> None:
    """16 threads x 40 calls, each with its own token, against a server that
    mixes interim answers, unasked extra answers and garbage into its
    keep-alive connections: every call gets its own account or a
    PlexAuthError, never another request's (counted on both sides)."""
    import random

    chooser = random.Random(1103)
    lock = threading.Lock()
    served: dict[str, int] = dict.fromkeys(MIXED, 0)
    answered: list[str] = []  # the tokens of the requests the server answered properly

    def script(conn: socket.socket, request: Incoming) -> bool:
        token = request.headers["x-plex-token"]
        assert request.line == "GET /api/v2/user HTTP/1.1"  # every request arrives whole, never after leftovers
        with lock:
            kind = chooser.choice(MIXED)
            served[kind] += 1
        right = http_answer(200, account_of(token))
        if kind == "garbage":
            conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")
            return False
        if kind == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            return False
        if kind == "early-hints":
            conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            time.sleep(0.003)  # a slow origin behind the proxy: the real answer comes a little later
        elif kind == "continue":
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 3)
        elif kind == "processing":
            conn.sendall(b"HTTP/1.1 102 Processing\r\n\r\n")
        if kind == "204-with-body":
            # A 204 may have no body; this one carries another user's answer behind it.
            conn.sendall(http_answer(204, account_of("EVIL")))
            return True
        conn.sendall(right + (http_answer(200, account_of("EVIL")) if kind == "extra-answer" else b""))
        with lock:
            answered.append(token)
        return True

    server = fault_server(keep_alive(script))
    threads, calls = 16, 40
    start = threading.Barrier(threads)
    results: list[tuple[str, Any]] = []

    def work(n: int) -> None:
        start.wait()
        for i in range(calls):
            token = f"{TOKEN}-{n}-{i}"
            config = hostile_config(server.port, token=token, retries=1)
            try:
                outcome: Any = plexauth.get_token_details(config).username
            except PlexAuthError as exc:
                sweep(exc, (token,))
                outcome = exc
            with lock:
                results.append((token, outcome))

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    plexauth._pools[True].clear()
    server.close()
    assert len(results) == threads * calls
    wrong = [(token, got) for token, got in results if isinstance(got, str) and got != "user-" + token]
    assert wrong == []
    succeeded = {token for token, got in results if isinstance(got, str)}
    # Server side: each success was answered properly to that very request.
    assert succeeded <= set(answered)
    failed = [got for _, got in results if not isinstance(got, str)]
    # Garbage and resets (after a retry) are TransportErrors; a 204 where an account was due, a ResponseError.
    assert {type(exc) for exc in failed} <= {TransportError, ResponseError}
    # Interim answers are skipped, not taken for the answer: they cost no call.
    assert len(succeeded) > threads * calls * 0.6
    assert all(served[kind] > 20 for kind in MIXED), served


@pytest.mark.parametrize("interim", [b"103 Early Hints", b"100 Continue", b"102 Processing"])
def test_hostile__interim_answers_are_skipped(fault_server: Any, interim: bytes) -> None:
    def script(conn: socket.socket, request: Incoming) -> bool:
        conn.sendall(b"HTTP/1.1 " + interim + b"\r\nLink: </a>\r\n\r\n")
        conn.sendall(http_answer(200, account_of(request.headers["x-plex-token"])))
        return True

    server = fault_server(keep_alive(script))
    for token in ("first", "second", "third"):
        assert plexauth.get_token_details(hostile_config(server.port, token=token)).username == "user-" + token
    plexauth._pools[True].clear()
    server.close()
    assert server.connections == 1  # one keep-alive connection served all three, in step


def test_hostile__endless_interim_answers_and_switching_protocols(fault_server: Any) -> None:
    def endless(conn: socket.socket, request: Incoming) -> bool:
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 50)
        return False

    def switching(conn: socket.socket, request: Incoming) -> bool:
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\n\r\n" + http_answer(200, b"{}"))
        return False

    for script, reason in ((endless, "more than 8 interim (1xx) answers"),
                           (switching, "the server switched protocols (101)")):
        server = fault_server(keep_alive(script))
        with raises(TransportError) as info:
            plexauth.get_token_details(hostile_config(server.port))
        assert info.value.reason == f"{reason} (from http://127.0.0.1:{server.port})"


def test_hostile__a_connection_goes_back_to_the_pool_only_when_read_to_the_end(fault_server: Any) -> None:
    # After an error body too large to keep, the rest is never read as the next answer.
    def script(conn: socket.socket, request: Incoming) -> bool:
        if request.headers["x-plex-token"] == "big":
            body = b"x" * (plexauth._READ_ERROR_BODY * 2)
            conn.sendall(http_answer(500, body + b"HTTP/1.1 200 OK\r\n"))
            return True
        conn.sendall(http_answer(200, account_of(request.headers["x-plex-token"])))
        return True

    server = fault_server(keep_alive(script))
    with raises(APIError) as info:
        plexauth.get_token_details(hostile_config(server.port, token="big"))
    assert info.value.body == b""  # read only in part: not kept
    assert plexauth.get_token_details(hostile_config(server.port, token="next")).username == "user-next"
    plexauth._pools[True].clear()
    server.close()
    assert server.connections == 2


def test_hostile__bodies_cost_bounded_memory_and_raise_only_plexauth_errors(bodies_server: Any) -> None:
    """Every operation against every hostile body, in a process whose address
    space may grow by 64 MiB at most: an allocation past it would raise
    MemoryError there, which the probe reports instead of dying."""
    server, cases = bodies_server
    ops = [op.name for op in OPS]
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, json.dumps([server.port, cases, ops])],
        capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.abspath(plexauth.__file__)),
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    outcomes = {(case, name): outcome for case, name, outcome in report["results"]}
    assert len(outcomes) == len(cases) * len(ops)
    errors = {cls.__name__ for cls in (PlexAuthError, APIError, ResponseError, TransportError, UnauthorizedError,
                                       BadRequestError, RateLimitedError, TwoFactorRequiredError, PinExpiredError)}
    escaped = {key: outcome for key, outcome in outcomes.items() if outcome.split()[0] not in (*errors, "ok")}
    assert escaped == {}
    # What each decoding operation makes of them (ping and sign-out read the body only to its cap).
    for case in cases:
        for name in ("details", "transient", "pin-create"):
            decodes = case in ("lone-surrogates", "near-cap-services") and name == "details"
            expected = "ok UserPlexAccount" if decodes else "ResponseError"
            if case in ("endless-headers", "negative-chunk"):
                expected = "TransportError"
            assert outcomes[(case, name)] == expected, (case, name)
    assert outcomes[("near-cap-connections", "source")] == "ok SourceConnectionInformation"
    assert report["grown"] < 64 * 2**20


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("gzip-bomb", f"the body is larger than {plexauth.MAX_BODY_BYTES} bytes once decompressed"),
        ("gzip-gzip", "the body is in a Content-Encoding plexauth does not read (only one gzip or deflate layer)"),
        ("deflate-bomb", f"the body is larger than {plexauth.MAX_BODY_BYTES} bytes once decompressed"),
        ("tiny-elements", "the XML holds more than 10000 elements and attributes"),
        ("many-attributes", "the XML holds more than 10000 elements and attributes"),
        ("utf16-entities", "XML with a DTD or entities is refused"),
        ("utf16-entity-account", "XML with a DTD or entities is refused"),
        ("utf8-entities", "XML with a DTD or entities is refused"),
        ("external-entity", "XML with a DTD or entities is refused"),
        ("x-unknown", "the XML is in an encoding plexauth does not read (only UTF-8, UTF-16, Latin-1)"),
        ("rot13", "the XML is in an encoding plexauth does not read (only UTF-8, UTF-16, Latin-1)"),
        ("hex", "the XML is in an encoding plexauth does not read (only UTF-8, UTF-16, Latin-1)"),
        ("utf16-no-bom", "the body holds NUL characters"),
        ("deep-xml", "the XML is nested too deeply"),
        ("empty-objects", "the JSON holds more than 10000 objects and lists"),
        ("deep-json", "the JSON holds more than 10000 objects and lists"),
        ("over-cap", f"the body is larger than {plexauth.MAX_BODY_BYTES} bytes"),
        ("many-strings", "the JSON holds more than 100000 strings"),
    ],
)
def test_hostile__bodies_are_refused_with_their_reason(bodies_server: Any, name: str, reason: str) -> None:
    server, _ = bodies_server
    with raises(ResponseError) as info:
        plexauth.get_token_details(hostile_config(server.port, product=name))
    assert info.value.reason == reason
    # As an error body, the same is an APIError that keeps what it safely can.
    with raises(APIError) as info:
        plexauth.get_token_details(hostile_config(server.port, product=name, token="error"))
    assert info.value.status == 500


@pytest.mark.parametrize(("size", "whole"), [
    (b"22", True), (b" 22 ", True), (b"22;name=value", True),  # what HTTP allows
    (b"+22", False), (b"2_2", False), (b"0x22", False), (b"-1", False), (b"0" * 17 + b"22", False),  # int() reads
])
def test_hostile__chunk_sizes_are_hex_digits_only(fault_server: Any, size: bytes, whole: bool) -> None:
    body = b'{"MediaContainer": {"token": "t"}}'
    assert len(body) == 0x22
    server = fault_server(answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                 + size + b"\r\n" + body + b"\r\n0\r\n\r\n"))
    if whole:
        assert plexauth.get_transient_token(hostile_config(server.port)) == "t"
    else:
        with raises(TransportError, match="the connection to .* broke"):
            plexauth.get_transient_token(hostile_config(server.port))


def test_hostile__numbers_beyond_64_bits_are_not_taken(fault_server: Any) -> None:
    account = json.loads(account_of("big"))
    server = fault_server(answer(http_answer(200, json.dumps({**account, "id": 1e308}).encode())))
    with raises(ResponseError, match="'id' is missing or has the wrong type"):
        plexauth.get_token_details(hostile_config(server.port))
    server = fault_server(answer(http_answer(200, json.dumps({**account, "homeSize": 2**63, "joinedAt": 1e300,
                                                              "maxHomeSize": -(2**63)}).encode())))
    taken = plexauth.get_token_details(hostile_config(server.port))
    assert (taken.home_size, taken.joined_at, taken.max_home_size) == (None, None, -(2**63))


def test_hostile__errors_keep_their_first_entries(fault_server: Any) -> None:
    entries = [{"code": 1001, "message": f"entry {i}"} for i in range(500)]  # 20 KB: read whole
    server = fault_server(answer(http_answer(401, json.dumps({"errors": entries}).encode())))
    with raises(UnauthorizedError) as info:
        plexauth.get_token_details(hostile_config(server.port))
    assert [entry["message"] for entry in info.value.errors] == [f"entry {i}" for i in range(16)]


def test_hostile__utf16_echo_of_a_password_beyond_latin1_is_withheld(fault_server: Any) -> None:
    password = "\u043f\u0430\u0440\u043e\u043b\u044c\u0421\u0435\u043a\u0440\u0435\u0442"  # Cyrillic: no NUL in UTF-16
    echoed = b'{"errors": [{"code": 1001, "message": "bad password ' + password.encode("utf-16-le") + b'"}]}'
    server = fault_server(answer(http_answer(401, echoed)))
    with raises(UnauthorizedError, match=r"failed with 401 Unauthorized") as info:
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", password)
    sweep(info.value, (password,))
    assert info.value.body == b""


def test_hostile__a_password_with_a_dotted_capital_i_is_masked_in_either_case(fault_server: Any) -> None:
    # "İ".lower() is two characters; re matches "İ" and "i" regardless of case, as the echo needs.
    password = "\u0130stanbul-\u015fifre-42"
    message = f"bad password {password}, or {password.upper()}"
    echoed = json.dumps({"errors": [{"code": 1001, "message": message}]}, ensure_ascii=False).encode()
    server = fault_server(answer(http_answer(401, echoed)))
    with raises(UnauthorizedError) as info:
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", password)
    sweep(info.value, (password,))
    assert info.value.message == "bad password ***, or ***"


@pytest.mark.parametrize(("token", "password"), [("\u03a4\u0391\u03a3", "\u03a4\u0391\u03a3\u039f\u03a3-1987-Ath"),
                                               ("pari", "par\u0131l12345"), ("sa", "\u017fabcdefgh")])
def test_hostile__a_token_that_starts_a_password_masks_none_of_it(httpserver: HTTPServer, config: Config,
                                                                   token: str, password: str) -> None:
    """A token the server makes of the start of the password (up to a
    letter that case makes another: a final sigma, a dotless i, a long s)
    must not end the password's mask where it ends, in any case."""
    httpserver.expect_request("/api/v2/users/signin", method="POST").respond_with_data(
        json.dumps({"id": 1, "uuid": "u", "username": "me", "authToken": token,
                    "title": f"{password} / {password.upper()} / {password.lower()}"}, ensure_ascii=False),
        status=201, content_type="application/json")
    account = plexauth.post_users_sign_in_data(config, "me", password)
    assert "title='*** / *** / ***'" in repr(account)


def test_hostile__a_repr_masks_the_secrets_of_every_model_in_it(fault_server: Any) -> None:
    echoed = {**json.loads(account_of("echo")), "services": [{"identifier": TOKEN}]}
    server = fault_server(answer(http_answer(200, json.dumps(echoed).encode())))
    account = plexauth.get_token_details(hostile_config(server.port))
    assert account.services[0].identifier == TOKEN  # the data as sent...
    # ...but no repr shows it: not the account's, not the service's, not one a user makes of them.
    mine = plexauth.UserPlexAccount(id=1, uuid="u", username="n", auth_token="t", services=account.services)
    for text in (repr(account), repr(account.services[0]), repr(mine), str(mine)):
        assert TOKEN not in text
        assert_no_secret(text)


def test_hostile__the_models_of_one_answer_mask_one_anothers_secrets(httpserver: HTTPServer, config: Config) -> None:
    # plex.tv may repeat one resource's token in another's connection; a value
    # sent as a token that is no use as one (a tab in it) is a secret all the same.
    unusable = "CANARY-UNUSABLE\tTOKEN-z4"
    first = {"clientIdentifier": "m1", "name": f"One {unusable}", "provides": "server", "accessToken": ACCESS_TOKEN,
             "connections": [{"uri": "http://192.0.2.1:32400"}]}
    second = {"clientIdentifier": "m2", "name": "Two", "provides": "server", "accessToken": unusable,
              "connections": [{"uri": f"http://192.0.2.2:32400/?t={urllib.parse.quote(ACCESS_TOKEN)}"}]}
    httpserver.expect_request("/api/v2/resources").respond_with_json([first, second])
    one, two = plexauth.get_resources(config)
    assert (one.name, two.access_token) == (f"One {unusable}", None)  # the data as sent...
    services = [{"identifier": "a", "token": SERVICE_TOKEN}, {"identifier": "b", "endpoint": f"x/{SERVICE_TOKEN}"}]
    httpserver.expect_request("/api/v2/user").respond_with_json({**ACCOUNT, "services": services})
    account = plexauth.get_token_details(config)
    assert account.services[1].endpoint == f"x/{SERVICE_TOKEN}"
    # ...but no model shows another's secret: not alone, not in a list.
    for text in (repr(one), repr(two), repr(two.connections[0]), str((one, two)), repr(account.services[1])):
        assert_no_secret(text)
    assert repr(two.connections[0]).endswith("uri='http://192.0.2.2:32400/?t=***', local=None, relay=None, ipv6=None)")


def test_hostile__secret_keys_holding_numbers_or_lists_are_secrets_too(httpserver: HTTPServer,
                                                                       config: Config) -> None:
    # An XML element given twice is a list; a token may come as a number.
    twice = ('<MediaContainer><Device name="a CANARY-ONE b CANARY-TWO c 98765432101" clientIdentifier="m1">'
             '<accessToken>CANARY-ONE</accessToken><accessToken>CANARY-TWO</accessToken></Device></MediaContainer>')
    httpserver.expect_request("/security/resources").respond_with_data(twice, content_type="application/xml")
    source = plexauth.get_source_connection_information(config, "server://m1")
    assert (source.name, source.access_token) == ("a CANARY-ONE b CANARY-TWO c 98765432101", None)
    assert repr(source).startswith("SourceConnectionInformation(name='a *** b *** c 98765432101'")
    numbered = {"clientIdentifier": "m1", "name": "n 98765432101 1.5", "provides": "server", "accessToken": 98765432101,
                "connections": [{"uri": "http://192.0.2.1:32400/?t=1.5"}]}
    # A JSON object under a secret key: its strings count, not a null or a flag.
    nested = {**numbered, "name": "n CANARY-NESTED True None",
              "accessToken": {"k": "CANARY-NESTED", "n": None, "f": True}}
    httpserver.expect_request("/api/v2/resources").respond_with_json(
        [numbered, {**numbered, "accessToken": [1.5]}, nested])
    first, second, third = plexauth.get_resources(config)
    assert "name='n *** ***'" in repr(first)
    assert "uri='http://192.0.2.1:32400/?t=***'" in repr(second.connections[0])
    assert "name='n *** True None'" in repr(third)


def test_hostile__secrets_are_masked_as_repr_writes_them(httpserver: HTTPServer, config: Config) -> None:
    # repr() escapes a quote when the text holds both kinds, and characters it
    # cannot print: the password echoed in a title must not show that way.
    passwords = ["CANARY-PASS-it's \"x\"", "CANARY-PASS-\xa0nbsp", "CANARY-PASS-\U000e0041tag", "CANARY-PASS-\\"]
    for password in passwords:
        httpserver.clear()
        httpserver.expect_request("/api/v2/users/signin").respond_with_json(
            {**ACCOUNT, "title": f"'\"{password}", "username": password}, status=201)
        account = plexauth.post_users_sign_in_data(config, login="user", password=password)
        assert account.username == password
        for text in (repr(account), str(account.subscription), repr([account])):
            assert "CANARY" not in text, text


def test_hostile__copies_mask_as_the_model_they_copy(httpserver: HTTPServer, config: Config) -> None:
    # A copy made in this process keeps what its model masks: the tokens of
    # the whole answer (a pickle carries the fields only, on purpose).
    first = {"clientIdentifier": "m1", "name": "One", "provides": "server", "accessToken": ACCESS_TOKEN}
    second = {"clientIdentifier": "m2", "name": f"Two {TOKEN}", "provides": "server", "accessToken": "CANARY-B-1",
              "connections": [{"uri": f"http://192.0.2.2:32400/{ACCESS_TOKEN}"}]}
    httpserver.expect_request("/api/v2/resources").respond_with_json([first, second])
    resources = plexauth.get_resources(config)
    connection = resources[1].connections[0]
    for copied in (copy.copy(connection), copy.deepcopy(connection), copy.deepcopy(resources),
                   copy.copy(resources[1])):
        assert copied == (resources if isinstance(copied, tuple) else connection if copied.__class__ is
                          plexauth.Connection else resources[1])
        assert_no_secret(repr(copied))
    assert copy.deepcopy(resources)[1].connections[0].raw is not connection.raw
    # The caller's token, which the request sent and no field of the first holds, is in no pickle.
    assert TOKEN.encode() not in pickle.dumps(resources[0])
    assert pickle.loads(pickle.dumps(resources)) == resources

REPR_MEMORY_PROBE = r"""
import gc, http.server, itertools, json, resource, sys, threading, tracemalloc
import plexauth
answers = itertools.count()
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # 100 resources, each with a token no answer before had
        n = next(answers)
        body = json.dumps([{"clientIdentifier": f"m{i}", "name": f"n{i}", "provides": "server",
                            "accessToken": f"{n:06d}-{i:03d}-tok-Zq"} for i in range(100)]).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
config = plexauth.Config("test-client-0001", token="probe-token-0001",
                         plex_tv_url=f"http://127.0.0.1:{server.server_port}/api/v2")
shown = [repr(plexauth.get_resources(config)[0]) for _ in range(10)]  # the patterns of a few answers kept
def vm_size():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
limit = vm_size() + 64 * 2**20
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
gc.collect()
tracemalloc.start()
shown += [repr(plexauth.get_resources(config)[0]) for _ in range(40)]
gc.collect()
kept = tracemalloc.get_traced_memory()[0]
print(json.dumps([kept, sorted(set(text.split(", product=")[0] for text in shown))]))
"""


def test_hostile__reprs_of_many_answers_keep_bounded_memory() -> None:
    """What masking works out for an answer's secrets (a pattern of about
    140 KiB for 100 tokens) is kept for a few answers only, not in re's own
    cache of 512: the reprs of 40 more answers leave less than 3 MiB more
    allocated (tracemalloc; 1.2 MiB here, the eight patterns kept, which
    replace those made before it started; 5.2 MiB before), and run in 64 MiB
    more address space."""
    result = subprocess.run([sys.executable, "-c", REPR_MEMORY_PROBE], capture_output=True, text=True, timeout=300,
                            cwd=os.path.dirname(os.path.abspath(plexauth.__file__)), check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    kept, shown = json.loads(result.stdout)
    assert shown == ["Resource(client_identifier='m0', name='n0'"]
    assert kept < 3 * 2**20


def test_hostile__an_answer_with_too_many_secrets_to_look_for_is_withheld(httpserver: HTTPServer,
                                                                          config: Config) -> None:
    # 600 tokens of 64 characters: more than 32 KiB of secrets to look for in every repr.
    many = [{"clientIdentifier": f"m{i}", "name": f"n{i}", "provides": "server", "accessToken": f"{i:04d}" + "k" * 60}
            for i in range(600)]
    httpserver.expect_request("/api/v2/resources").respond_with_json(many)
    resources = plexauth.get_resources(config)
    assert [resource.access_token for resource in resources] == [item["accessToken"] for item in many]
    assert (repr(resources[0]), str(resources[-1])) == ("***", "***")


def test_hostile__a_text_too_long_to_look_through_is_withheld(fault_server: Any) -> None:
    blob = base64.b64encode(b"x" * 45_000).decode()  # 60 000 characters of base64, to read four ways
    server = fault_server(answer(http_answer(200, json.dumps({**json.loads(account_of("b")), "title": blob}).encode())))
    account = plexauth.get_token_details(hostile_config(server.port))
    assert account.title == blob
    assert repr(account) == "***"


def serve_servers(httpserver: HTTPServer, tokens: list[str], names: list[str],
                  connections: Callable[[int], list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """plex.tv's resources, served: one server for each token, named by
    ``names`` then n<i>, with ``connections(i)`` if given."""
    answer = [{"clientIdentifier": f"m{i}", "name": names[i] if i < len(names) else f"n{i}", "provides": "server",
               "accessToken": token, **({"connections": connections(i)} if connections else {})}
              for i, token in enumerate(tokens)]
    httpserver.expect_request("/api/v2/resources").respond_with_json(answer)
    return answer


def servers_json(cli: Any) -> tuple[int, list[dict[str, Any]]]:
    """``plexauth servers --json``: its exit code and the servers it shows."""
    code, out, _ = cli("servers", "--json")
    return code, json.loads(out)["servers"]


def test_hostile__masking_keeps_each_text_to_a_budget(httpserver: HTTPServer, config: Config, cli: Any,
                                                      token_env: None) -> None:
    """A token made to share a long prefix with 40 long names would cost
    masking about 30 000 × 16 000 character comparisons for each name
    (seconds each, about 100 s for the command's result and a repr of each
    server, before the budget): each name is withheld at once, from a repr
    and from the command's result, while the other servers' names show."""
    serve_servers(httpserver, ["a" * 8_000 + "b"] + [f"tok-{i:04d}-Zq" for i in range(1, 50)], ["a" * 30_000] * 40)
    started = time.monotonic()
    shown = [repr(resource) for resource in plexauth.get_resources(config)]
    code, servers = servers_json(cli)
    assert time.monotonic() - started < 20  # about 1 s here
    assert shown[:40] == ["***"] * 40
    assert shown[40].startswith("Resource(client_identifier='m40', name='n40'")
    assert (code, [server["name"] for server in servers]) == (0, ["***"] * 40 + [f"n{i}" for i in range(40, 50)])


def test_hostile__masking_keeps_a_commands_result_to_a_budget(httpserver: HTTPServer, cli: Any,
                                                              token_env: None) -> None:
    """60 names that each fit a text's budget, beside a token made to share
    their prefix, but not the result's in all: the first are shown whole,
    then, the budget spent, the rest are withheld at once, while the short
    names of the last servers, which cost next to nothing, still show."""
    names = ["~" * 3_000] * 60 + [f"server n{i} of a friend" for i in range(60, 70)]
    serve_servers(httpserver, ["~" * 8_000 + "b"] + [f"tok-{i:04d}-Zq" for i in range(1, 70)], names)
    code, servers = servers_json(cli)
    shown = [server["name"] for server in servers]
    whole = shown.index("***")
    assert 0 < whole < 60  # 20 here
    assert (code, shown) == (0, names[:whole] + ["***"] * (60 - whole) + names[60:])


def test_hostile__comments_that_never_close_cost_masking_no_more(httpserver: HTTPServer, config: Config,
                                                               cli: Any, token_env: None) -> None:
    """Names of 15 000 ``<!--`` that no ``-->`` closes: dropping comments
    with a lazy pattern read on from each to the end (8 s a name here, about
    100 s for the command's result and a repr of each server); read once,
    each name is shown whole, as it gives nothing away."""
    names = ["<!--" * 15_000] * 12
    serve_servers(httpserver, [f"tok-{i:04d}-Zq" for i in range(12)], names)
    started = time.monotonic()
    shown = [repr(resource) for resource in plexauth.get_resources(config)]
    code, servers = servers_json(cli)
    assert time.monotonic() - started < 20  # about 1 s here
    assert all(f"name={names[0]!r}" in text for text in shown)
    assert (code, [server["name"] for server in servers]) == (0, names)


def test_hostile__combining_marks_out_of_order_cost_masking_no_more(httpserver: HTTPServer, config: Config,
                                                                    cli: Any, token_env: None) -> None:
    """A token, and names, of combining marks in the wrong order: NFKC sorts
    them in time quadratic in the run (25 s for a token of 64 000, over
    minutes for the command); cut into runs of 30, as UAX #15's stream-safe
    text has it, each reads in milliseconds, and the names are shown whole."""
    marks = "a" + "\u0301" * 32_000 + "\u0316" * 32_000
    token = "a" + "\u0301" * 2_000 + "\u0316" * 2_000  # 8 000 bytes: the longest token taken
    serve_servers(httpserver, [token, "tok-0001-Zq"], [])
    started = time.monotonic()
    resources = plexauth.get_resources(dataclasses.replace(config, total_timeout=5.0))
    assert time.monotonic() - started < 10  # well under a second here
    assert [resource.access_token for resource in resources] == [token, "tok-0001-Zq"]
    httpserver.clear()
    serve_servers(httpserver, ["tok-0000-Zq", "tok-0001-Zq"], [marks, "b" + marks[1:]])
    started = time.monotonic()
    code, servers = servers_json(cli)
    assert time.monotonic() - started < 15  # about 1 s here
    assert (code, [server["name"] for server in servers]) == (0, [marks, "b" + marks[1:]])


def test_hostile__tokens_that_differ_only_in_case_cost_masking_no_more(httpserver: HTTPServer, cli: Any,
                                                                       token_env: None) -> None:
    """1 024 tokens of i and dotless i (one letter to re.IGNORECASE), beside
    400 names of 1 900 i's: searched without regard to case, every branch of
    the pattern matched at every character (about 30 s for the command
    here); folded first, one does."""
    tokens = ["".join(letters) + "x" for letters in itertools.product("i\u0131", repeat=10)]
    serve_servers(httpserver, tokens, ["i" * 1_900] * 400)
    started = time.monotonic()
    code, servers = servers_json(cli)
    assert time.monotonic() - started < 15  # about 2 s here
    assert (code, [server["name"] for server in servers][399:401]) == (0, ["i" * 1_900, "n400"])


def test_hostile__tokens_made_to_nest_deep_withhold_every_text(httpserver: HTTPServer, config: Config) -> None:
    # Each token one "a" longer than the last: looking for all of them would nest 40 deep (re's parser recurses).
    serve_servers(httpserver, ["a" * i + "b" for i in range(1, 41)], [])
    resources = plexauth.get_resources(config)
    assert [resource.name for resource in resources[:2]] == ["n0", "n1"]
    assert repr(resources[0]) == "***"


def test_hostile__a_large_account_is_shown_whole_within_the_budget(httpserver: HTTPServer, cli: Any,
                                                                   token_env: None) -> None:
    # 1 000 servers, each with its own random token, three connections and a longer name: none withheld.
    rng = random.Random(7)
    tokens = ["".join(rng.choices(string.ascii_letters + string.digits + "-_", k=24)) for _ in range(1000)]
    answer = serve_servers(httpserver, tokens, [f"Server {i} of a friend's, in the living room" for i in range(1000)],
                           lambda i: [{"uri": f"https://10-0-{i // 250}-{i % 250}.{rng.getrandbits(128):032x}"
                                              f".plex.direct:32400", "protocol": "https", "local": True}] * 3)
    code, servers = servers_json(cli)
    assert (code, [server["name"] for server in servers]) == (0, [server["name"] for server in answer])
    assert [server["connections"][2]["uri"] for server in servers] == [server["connections"][2]["uri"]
                                                                       for server in answer]


def test_hostile__lone_surrogates_become_replacement_characters(bodies_server: Any) -> None:
    server, _ = bodies_server
    account = plexauth.get_token_details(hostile_config(server.port, product="lone-surrogates"))
    assert account.username == "\U000103ff\ufffd"  # the pair joined, the lone one replaced
    account.username.encode("utf-8")


def test_hostile__encodings_plex_uses_are_read(fault_server: Any) -> None:
    declared = '<?xml version="1.0" encoding="{}"?><MediaContainer token="t\u00e9"/>'
    forms = [
        utf16(declared.format("UTF-16")),
        declared.format("ISO-8859-1").encode("latin-1"),
        b"\xef\xbb\xbf" + declared.format("utf-8").encode(),
        "\ufeff{\"MediaContainer\": {\"token\": \"t\u00e9\"}}".encode("utf-16-le"),
    ]
    for body in forms:
        server = fault_server(answer(http_answer(200, body)))
        assert plexauth.get_transient_token(hostile_config(server.port)) == "t\u00e9"
    for codec in ("utf-32", "utf-32-be"):  # Plex never sends it
        server = fault_server(answer(http_answer(200, '{"MediaContainer": {"token": "t"}}'.encode(codec))))
        with raises(ResponseError):
            plexauth.get_transient_token(hostile_config(server.port))


@pytest.mark.parametrize("form", list(echo_forms(TOKEN)))
@pytest.mark.parametrize("body_kind", ["json", "xml", "html", "utf16-json"])
def test_hostile__echoed_secrets_are_masked_in_every_form(fault_server: Any, form: str, body_kind: str) -> None:
    echoes = " ".join(echo_forms(secret)[form] for secret in SIGN_IN_SECRETS.values())

    def script(conn: socket.socket, request: Incoming) -> bool:
        if body_kind == "xml":
            body = f'<errors><error code="1001" message="bad {html.escape(echoes)}" status="401"/></errors>'.encode()
        elif body_kind == "html":
            body = f"<html><body><p>bad {echoes}</p></body></html>".encode()
        else:
            body = json.dumps({"errors": [{"code": 1001, "message": f"bad {echoes}", "status": 401}]}).encode()
        if body_kind == "utf16-json":
            body = body.decode().encode("utf-16")
        conn.sendall(http_answer(401, body, {"X-Echo": "x"}))
        return True

    server = fault_server(keep_alive(script))
    with raises(UnauthorizedError) as info:
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", PASSWORD, verification_code=CODE)
    exc = info.value
    if not (body_kind == "xml" and form.startswith("markup-")):  # escaped in XML, markup is only text
        with pytest.raises(AssertionError):  # the checker does see the secrets in what the server sent
            assert_no_secret(echoes if body_kind != "xml" else html.escape(echoes))
    assert exc.status == 401
    if form in WITHHELD_FORMS:  # found, but not where it could be cut out: all of it is withheld
        assert exc.body == b""
        assert exc.message in (None, "***")
    else:
        if body_kind != "html":
            assert exc.code == 1001
            assert (exc.message or "").startswith("bad ")
        assert "***" in exc.body.decode()
    for text in (str(exc), exc.message or "", repr(exc.errors), exc.body.decode()):
        assert_no_secret(text)


def test_hostile__secrets_under_secret_keys_are_masked_even_when_escaped(fault_server: Any) -> None:
    body = '{"errors": [{"code": 1, "message": "m"}], "auth\\u0054oken": "' + AUTH_TOKEN + '", ' \
           '"user": {"access_token": "' + ACCESS_TOKEN.replace("-", "\\u002d") + '"}}'
    server = fault_server(answer(http_answer(500, body.encode())))
    with raises(APIError) as info:
        plexauth.get_token_details(hostile_config(server.port))
    assert info.value.body.count(b"***") == 2


def test_hostile__redirect_to_an_address_holding_a_secret_is_not_followed(
    fault_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    followed = []

    def script(conn: socket.socket, request: Incoming) -> bool:
        if request.path != "/api/v2/user":
            followed.append(request.target)
        location = f"/api/v2/next?X-Plex-Token={urllib.parse.quote(TOKEN)}&x=1"
        conn.sendall(http_answer(302, b"", {"Location": location}))
        return True

    server = fault_server(keep_alive(script))
    with raises(APIError) as info:
        plexauth.get_token_details(hostile_config(server.port))
    assert info.value.status == 302
    assert followed == []
    assert "GET /api/v2/user: not redirected to an address that holds a secret" in caplog.messages


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 " + TOKEN.encode() + b"\r\nContent-Length: 2\r\n\r\n{}",  # a reason phrase
        b"HTTP/1.1 " + TOKEN.encode() + b" OK\r\nContent-Length: 2\r\n\r\n{}",  # a status line
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n" + TOKEN.encode() + b"\r\nX-A: b\r\n\r\n{}",  # a header line
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n X-Folded: " + TOKEN.encode() + b"\r\n\r\n{}",
        b"HTTP/1.1 500 Oops\r\nContent-Length: 12\r\nX-Echo: " + TOKEN.encode() + b"\r\n\r\nno json here",
    ],
    ids=["reason", "status-line", "header-line", "folded-header", "error-header"],
)
def test_hostile__secrets_in_status_and_header_lines_reach_no_log_and_no_exception(
    fault_server: Any, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    server = fault_server(answer(raw))
    try:
        plexauth.get_token_details(hostile_config(server.port))
    except PlexAuthError as exc:
        sweep(exc)
    for record in caplog.records:  # _no_canary_in_logs checks the message; the exception too
        if record.exc_info:
            assert_no_secret("".join(traceback.format_exception(*record.exc_info)))


def test_hostile__url_errors_show_no_query_fragment_or_credentials() -> None:
    for url in (f"http://h:32400/library?X-Plex-Token={TOKEN}", f"http://me:{PASSWORD}@h:32400/",
                f"http://h:32400/#{TOKEN}", f"http://h:32400/\n?X-Plex-Token={TOKEN}", f"ftp://h/?t={TOKEN}"):
        with raises(ValueError) as info:
            Config(CLIENT_ID, server_url=url)
        assert "Config.server_url" in str(info.value)


def test_hostile__deeply_nested_error_entries_still_pickle(fault_server: Any) -> None:
    nested = '{"x": ' * 900 + "1" + "}" * 900
    body = '{"errors": [{"code": 1001, "message": "m", "deep": ' + nested + "}]}"
    server = fault_server(answer(http_answer(401, body.encode())))
    with raises(UnauthorizedError) as info:
        plexauth.get_token_details(hostile_config(server.port))
    assert info.value.errors == ({"code": 1001, "message": "m"},)
    assert pickle.loads(pickle.dumps(info.value)).errors == info.value.errors


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzipped(json.dumps({"MediaContainer": {"token": "t"}}).encode())),
        ("x-gzip", gzipped(b"") + gzipped(json.dumps({"MediaContainer": {"token": "t"}}).encode())),  # two members
        ("deflate", __import__("zlib").compress(json.dumps({"MediaContainer": {"token": "t"}}).encode())),
        ("deflate", __import__("zlib").compress(json.dumps({"MediaContainer": {"token": "t"}}).encode())[2:-4]),
        ("identity", json.dumps({"MediaContainer": {"token": "t"}}).encode()),
    ],
    ids=["gzip", "gzip-two-members", "deflate-zlib", "deflate-raw", "identity"],
)
def test_hostile__one_layer_of_gzip_or_deflate_is_read(fault_server: Any, encoding: str, body: bytes) -> None:
    server = fault_server(answer(http_answer(200, body, {"Content-Encoding": encoding})))
    assert plexauth.get_transient_token(hostile_config(server.port)) == "t"


def test_hostile__declared_utf16_without_its_mark_is_read_as_utf8(fault_server: Any) -> None:
    body = '<?xml version="1.0" encoding="UTF-16"?><MediaContainer token="t\u00e9"/>'.encode()
    server = fault_server(answer(http_answer(200, body)))
    assert plexauth.get_transient_token(hostile_config(server.port)) == "t\u00e9"


def test_hostile__unasked_bytes_inside_tls_are_not_read_as_the_next_answer(tmp_path_factory: Any) -> None:
    """Bytes that came in the same TLS record as the answer, beyond http.client's
    8 KiB buffer, wait decrypted inside OpenSSL where polling the socket does not
    see them: the connection is not reused."""
    server_context, bundle = tls_certificate(tmp_path_factory.mktemp("tls-extra"))
    seen: list[str] = []

    def handle(conn: socket.socket, done: threading.Event) -> None:
        with server_context.wrap_socket(conn, server_side=True) as tls:
            for request in read_requests(tls):  # type: ignore[arg-type]
                token = request.headers["x-plex-token"]
                seen.append(token)
                real = http_answer(200, account_of(token))
                tls.sendall(real + b"\0" * (8192 - len(real)) + http_answer(200, account_of(token)))

    server = FaultServer(handle)
    try:
        url = f"https://127.0.0.1:{server.port}"
        for token in ("alice", "bob"):
            config = Config(CLIENT_ID, token=token, plex_tv_url=url, verify=bundle, retries=0)
            assert plexauth.get_token_details(config).username == "user-" + token
        assert seen == ["alice", "bob"]
    finally:
        plexauth._pools[bundle].clear()
        server.close()
    assert server.connections == 2  # the first connection was not reused


@pytest.mark.parametrize("status", [204, 304])
def test_hostile__no_connection_is_reused_after_an_answer_that_has_no_body(fault_server: Any, status: int) -> None:
    """A body sent anyway after a 204 or 304 (here, a little later) would be the
    next request's answer on a reused connection."""
    def script(conn: socket.socket, request: Incoming) -> bool:
        token = request.headers["x-plex-token"]
        if token == "alice":
            conn.sendall(f"HTTP/1.1 {status} X\r\n\r\n".encode())
            time.sleep(0.05)  # the server's own pace, not a synchronisation
            conn.sendall(http_answer(200, account_of(token)))
        else:
            conn.sendall(http_answer(200, account_of(token)))
        return True

    server = fault_server(keep_alive(script))
    if status == 304:  # not a 2xx
        with raises(APIError, match="304"):
            plexauth.ping(hostile_config(server.port, token="alice"))
    else:
        plexauth.ping(hostile_config(server.port, token="alice"))
    assert plexauth.get_token_details(hostile_config(server.port, token="bob")).username == "user-bob"
    server.close()
    assert server.connections == 2


@pytest.mark.parametrize(
    ("name", "body"),
    [
        ("xml-comment", f'<errors><error code="1001">{TOKEN[:6]}<!-- -->{TOKEN[6:]}</error></errors>'),
        ("xml-cdata", f'<errors><error code="1001"><![CDATA[{TOKEN[:6]}]]>{TOKEN[6:]}</error></errors>'),
        # No tag inside an attribute, to XML; to a reader who drops all between < and >, one (found by hypothesis).
        ("bracketed-in-attribute", f'<errors><error code="1001" message="{TOKEN[:5]}<!-- a >{TOKEN[5:]}"/></errors>'),
        ("long-char-refs", '<errors><error code="1001" message="'
         + "".join(f"&#{ord(c):08d};" for c in TOKEN) + '"/></errors>'),
        ("tab-for-space", json.dumps({"errors": [{"code": 1001, "message": PASSWORD.replace(" ", "\t")}]})),
        ("two-spaces", json.dumps({"errors": [{"code": 1001, "message": PASSWORD.replace(" ", "  ")}]})),
        ("newline-in-attribute", '<errors><error code="1001" message="'
         + html.escape(PASSWORD).replace(" ", "\n") + '"/></errors>'),
        ("utf16le-inside-utf8", json.dumps({"errors": [{"code": 1001, "message": "m"}]})[:-1]
         + ', "x": "' + TOKEN.encode("utf-16-le").decode("latin-1") + '"}'),
        ("base64-of-the-form", json.dumps({"errors": [{"code": 1001, "message": "m", "echo": base64.b64encode(
            urllib.parse.urlencode({"login": "me", "password": PASSWORD}).encode()).decode()}]})),
        ("base64-wrapped", "bad " + "\n".join(textwrap.wrap(base64.b64encode(TOKEN.encode()).decode(), 8))),
        ("html-ref-without-semicolon", f"<p>&#{ord(TOKEN[0])}{TOKEN[1:]}</p>"),
        ("mojibake", "bad " + PASSWORD.encode().decode("latin-1")),
    ],
)
def test_hostile__secrets_that_masking_cannot_place_are_withheld(fault_server: Any, name: str, body: str) -> None:
    raw = body.encode("utf-8") if name not in ("utf16le-inside-utf8", "mojibake") else body.encode("latin-1")
    headers = {"Content-Type": "text/plain; charset=ISO-8859-1"} if name == "mojibake" else {}
    if name == "mojibake":
        raw = b'<?xml version="1.0" encoding="ISO-8859-1"?><errors><error code="1001" message="' + raw + b'"/></errors>'
    server = fault_server(keep_alive(lambda conn, request: conn.sendall(http_answer(401, raw, headers)) is None))
    with raises(UnauthorizedError) as info:  # the sweep sees through all of these forms
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", PASSWORD, verification_code=CODE)
    assert info.value.status == 401


def test_hostile__a_certificate_made_of_the_token_is_not_logged(tmp_path_factory: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A server that has the token shows a trusted certificate for another name
    with the token as its common name: urllib3 1.26 would log it when the name
    does not match; OpenSSL checks it here, and nothing is logged."""
    context, bundle = tls_certificate(tmp_path_factory.mktemp("tls-cn"), "elsewhere.example", common_name=TOKEN)
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=context)
    server.start()
    try:
        config = Config(CLIENT_ID, token=TOKEN, plex_tv_url=server.url_for("/api/v2"), verify=bundle, retries=0)
        with raises(TransportError, match="TLS certificate of https://127.0.0.1:.* is not trusted"):
            plexauth.get_token_details(config)
    finally:
        server.stop()
    assert all(TOKEN not in str(record.__dict__) for record in caplog.records)


def test_hostile__secret_values_with_escaped_quotes_are_masked_to_their_end(fault_server: Any) -> None:
    body = ('{"errors": [{"code": 1, "message": "m"}], "authToken": "' + AUTH_TOKEN[:6] + '\\"' + AUTH_TOKEN[6:]
            + '", "accessToken": "' + ACCESS_TOKEN + '\\\\", "after": "kept"}')
    server = fault_server(answer(http_answer(500, body.encode())))
    with raises(APIError) as info:
        plexauth.get_token_details(hostile_config(server.port))
    assert info.value.body.decode().endswith('"authToken": "***", "accessToken": "***", "after": "kept"}')


@pytest.mark.parametrize(
    ("name", "body", "headers"),
    [
        ("numeric-code", b'{"errors": [{"code": 4.711e3, "message": "m"}]}', {}),  # parsing makes 4711 of it
        ("retry-after", b"", {"Retry-After": "4711"}),
        ("cut-message", json.dumps({"errors": [{"code": 1, "message": "x" * 290 + " " + TOKEN[:8] + " "
                                                + TOKEN[8:]}]}).encode(), {}),
        ("latin-1-in-utf-8", b'{"errors": [{"code": 1, "message": "bad ' + "Pässwort".encode("latin-1") + b'"}]}',
         {}),
        ("hex", json.dumps({"errors": [{"code": 1, "message": "bad " + TOKEN.encode().hex()}]}).encode(), {}),
        ("backslash-x", json.dumps({"errors": [{"code": 1, "message": f"got {PASSWORD.encode()!s}"}]}).encode(),
         {}),
        ("upper-case", json.dumps({"errors": [{"code": 1, "message": "bad " + TOKEN.upper()}]}).encode(), {}),
    ],
)
def test_hostile__secrets_as_numbers_cut_off_or_in_other_spellings(fault_server: Any, name: str, body: bytes,
                                                                     headers: dict[str, str]) -> None:
    status = 429 if name == "retry-after" else 401
    server = fault_server(keep_alive(lambda conn, request: conn.sendall(http_answer(status, body, headers)) is None))
    code, password = ("4711", "Pässwort") if name in ("numeric-code", "retry-after", "latin-1-in-utf-8") else (
        CODE, PASSWORD)
    with raises(APIError) as info:
        plexauth.post_users_sign_in_data(hostile_config(server.port), "me", password, verification_code=code)
    sweep(info.value, (*CANARIES, code, password))
    if name == "numeric-code":
        assert info.value.code is None
        assert info.value.errors == ({"code": "***", "message": "m"},)
    if name == "retry-after":
        assert info.value.retry_after is None


def test_hostile__redirect_to_an_address_holding_the_token_in_hex_is_not_followed(fault_server: Any) -> None:
    followed = []

    def script(conn: socket.socket, request: Incoming) -> bool:
        if request.path != "/api/v2/user":
            followed.append(request.target)
        conn.sendall(http_answer(302, b"", {"Location": "/next?h=" + TOKEN.encode().hex()}))
        return True

    server = fault_server(keep_alive(script))
    with raises(APIError, match="302"):
        plexauth.get_token_details(hostile_config(server.port))
    assert followed == []


# ===========================================================================
# Tests: one bound on time
# ===========================================================================


def test_deadline__masking_an_error_body_keeps_to_it_too(fault_server: Any) -> None:
    """An error body made to cost the masking the most, sent just before the
    deadline: what is left to mask when it passes is withheld, and the call
    ends by total_timeout all the same."""
    unit = "%252525252525252525252541\u00e9"
    body = ('{"errors":[{"code": 1001, "message":"' + unit * 2000).encode()[: 32 * 1024]

    def late(conn: socket.socket, done: threading.Event) -> None:
        read_request(conn)
        done.wait(1.6)
        conn.sendall(http_answer(400, body))

    server = fault_server(late)
    config = hostile_config(server.port, total_timeout=2)
    started = time.monotonic()
    with raises(BadRequestError) as info:
        plexauth.post_users_sign_in_data(config, "me", PASSWORD)
    assert time.monotonic() - started < 2 + 0.6
    assert info.value.status == 400


def test_deadline__masking_past_it_withholds_what_is_left() -> None:
    """The moment the deadline passes in the middle of masking cannot be
    placed from outside, so the mechanism is shown directly: past the
    deadline, a long text still to mask is withheld, a short one is masked."""
    long_text = "%2541" * 2000
    body = json.dumps({"errors": [{"code": 1029, "message": long_text}]}).encode()
    config = Config(CLIENT_ID, token=TOKEN)
    # A 2FA code is digits: an error code that spells it is a secret too.
    request = plexauth._Request(config, "POST", "http://127.0.0.1:9/x", "/x", {}, None, False, (TOKEN, "4711"), 0.0)
    plexauth._local.deadline = time.monotonic() - 1
    try:
        assert plexauth._shown(long_text, (TOKEN,)) == "***"
        assert plexauth._shown("a short reason", (TOKEN,)) == "a short reason"
        error = plexauth._api_error(plexauth._Answer(401, {}, body), request)
        spelt = plexauth._api_error(plexauth._Answer(401, {}, body.replace(b"1029", b"4711")), request)
    finally:
        plexauth._local.deadline = math.inf
    assert isinstance(error, TwoFactorRequiredError)  # the code is kept: it says what to do
    assert (error.message, error.errors, error.body) == (None, (), b"")
    assert spelt.code is None  # a code that spells a secret is not
    sweep(spelt)


def test_deadline__tls_handshake_gets_what_is_left_after_a_slow_connect() -> None:
    """A listener whose accept queue is full drops the SYN, so the connect
    takes the kernel's first SYN retry (about 1 s); then no TLS handshake
    comes.  The handshake gets what is left of total_timeout, not a fresh
    connect timeout of its own."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(2):  # one waits in the accept queue, the other's SYN is dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    held: list[socket.socket] = []
    stop = threading.Event()

    def drain() -> None:
        listener.settimeout(0.1)
        stop.wait(0.3)  # the client's first SYN meets the full queue
        while not stop.is_set():
            with contextlib.suppress(OSError):
                held.append(listener.accept()[0])  # accepted, never answered

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    config = Config(CLIENT_ID, token=TOKEN, server_url=f"https://127.0.0.1:{port}", retries=0, timeout=10,
                    total_timeout=2)
    started = time.monotonic()
    try:
        with raises(TransportError, match="2 s limit for the whole call"):
            plexauth.get_transient_token(config)
        assert time.monotonic() - started < 2 + 0.6
    finally:
        stop.set()
        thread.join(5)
        for sock in (*fillers, *held, listener):
            sock.close()


@pytest.mark.parametrize("op", OPS, ids=repr)
@pytest.mark.parametrize(
    "handler",
    [trickle(LONG_HEADERS, 0.05), trickle(LONG_BODY, 0.05), endless_continue],
    ids=["trickled-headers", "trickled-body", "endless-100-continue"],
)
def test_deadline__every_call_ends_within_total_timeout(fault_server: Any, op: Op, handler: Any) -> None:
    # Each read gets a byte well within timeout; only the total bound can end the call.
    server = fault_server(handler)
    config = hostile_config(server.port, timeout=5.0, total_timeout=0.6, retries=3)
    started = time.monotonic()
    with raises(TransportError) as info:
        op.call(config)
    assert time.monotonic() - started < 0.6 + 1.5  # a generous margin over the promise
    assert info.value.reason == (f"no complete answer from http://127.0.0.1:{server.port} within the 0.6 s limit "
                                 "for the whole call")


def test_deadline__stalling_redirect_chain_and_retries(fault_server: Any) -> None:
    hops = []

    def script(conn: socket.socket, request: Incoming) -> bool:
        hops.append(request.path)
        time.sleep(0.3)  # each hop stalls, within the per-read timeout
        conn.sendall(http_answer(307, b"", {"Location": f"/api/v2/hop{len(hops)}"}))
        return True

    server = fault_server(keep_alive(script))
    started = time.monotonic()
    with raises(TransportError) as info:
        plexauth.get_token_details(hostile_config(server.port, timeout=1.0, total_timeout=1.0, retries=5))
    assert time.monotonic() - started < 1.0 + 1.5
    assert "limit for the whole call" in info.value.reason
    assert 2 <= len(hops) <= 5


def test_deadline__retry_waits_count(fault_server: Any) -> None:
    # A Retry-After longer than what is left is not waited for: the error comes at once.
    server = fault_server(keep_alive(lambda conn, request: conn.sendall(
        http_answer(503, b"", {"Retry-After": "2"})) is None))
    started = time.monotonic()
    with raises(APIError) as info:
        plexauth.get_token_details(hostile_config(server.port, total_timeout=1.0, retries=3))
    assert info.value.status == 503
    assert time.monotonic() - started < 1.0
    server.close()
    assert server.connections == 1


def test_deadline__trickling_pin_check_ends_within_the_wait(fault_server: Any) -> None:
    server = fault_server(trickle(http_answer(200, json.dumps({**PIN_DOC, "authToken": None}).encode()), 0.2))
    config = hostile_config(server.port, timeout=5.0)
    started = time.monotonic()
    with raises(PinExpiredError, match="PIN 7 was not approved within 2 s"):
        plexauth.wait_for_pin(config, Pin(id=7, code="ABCD"), timeout=2.0)
    assert time.monotonic() - started < 2.0 + 1.5


def test_deadline__trickled_tls_handshake(tls_server: Any) -> None:
    """A proxy that passes a real TLS server's bytes on one at a time: the
    handshake, too, ends by the call's bound."""
    server, bundle = tls_server
    target = ("127.0.0.1", server.port)
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(source: socket.socket, sink: socket.socket, slow: bool) -> None:
        with contextlib.suppress(OSError):
            while not stop.is_set():
                data = source.recv(1 if slow else 65536)
                if not data:
                    return
                if slow and stop.wait(0.05):
                    return
                sink.sendall(data)

    def serve() -> None:
        with contextlib.suppress(OSError):
            client, _ = listener.accept()
            with client, socket.create_connection(target) as upstream:
                forward = threading.Thread(target=pipe, args=(client, upstream, False), daemon=True)
                forward.start()
                pipe(upstream, client, True)
                client.shutdown(socket.SHUT_RDWR)
                forward.join(timeout=10)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    config = Config(CLIENT_ID, token=TOKEN, server_url=url, verify=bundle, timeout=5.0, total_timeout=0.8, retries=0)
    started = time.monotonic()
    try:
        with raises(TransportError):
            plexauth.get_transient_token(config)
        assert time.monotonic() - started < 0.8 + 1.5
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=10)


def test_deadline__a_fast_endless_answer_ends_by_the_time_bound_too(fault_server: Any) -> None:
    # Bytes always waiting: no read ever times out, and the body is read a
    # byte per chunk, far slower than the cap would be reached.
    def endless(conn: socket.socket, done: threading.Event) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunks = b"1\r\n \r\n" * 100_000
        while not done.is_set():
            conn.sendall(chunks)

    server = fault_server(endless)
    started = time.monotonic()
    with raises(TransportError) as info:
        plexauth.get_token_details(hostile_config(server.port, total_timeout=0.3))
    assert time.monotonic() - started < 0.3 + 1.5
    assert info.value.reason == (f"no complete answer from http://127.0.0.1:{server.port} within the 0.3 s limit "
                                 "for the whole call")


def test_deadline__pin_wait_passes_on_other_transport_errors() -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    with raises(TransportError, match="refused the connection"):
        plexauth.wait_for_pin(hostile_config(port), Pin(id=7, code="ABCD"), timeout=30)


def test_deadline__many_compressed_members_are_refused_at_once(fault_server: Any) -> None:
    members = {"deflate": b"\x03\x00" * (plexauth.MAX_BODY_BYTES // 2), "gzip": gzipped(b"") * 100_000}
    for encoding, body in members.items():
        server = fault_server(answer(http_answer(200, body, {"Content-Encoding": encoding})))
        started = time.monotonic()
        with raises(ResponseError, match="the body does not match its Content-Encoding"):
            plexauth.get_token_details(hostile_config(server.port, total_timeout=2.0))
        assert time.monotonic() - started < 2.0 + 1.5


@pytest.mark.parametrize(
    "body",
    [b"<![CDATA[" * 14_000, b"&lt;![CDATA[" * 10_000, b"token=" * 20_000, b'"token": "' * 12_000,
     b"token='" * 18_000, b"x" * 16 + b"%25252541" * 12_000],
    ids=["cdata", "escaped-cdata", "query-keys", "json-keys", "xml-keys", "escapes-between-literals"],
)
def test_deadline__error_bodies_made_to_cost_time_end_in_time(fault_server: Any, body: bytes) -> None:
    # Masking and withholding an error body take time linear in its size.
    server = fault_server(keep_alive(lambda conn, request: conn.sendall(http_answer(401, body)) is None))
    started = time.monotonic()
    with raises(UnauthorizedError):
        plexauth.get_token_details(hostile_config(server.port, total_timeout=2.0))
    assert time.monotonic() - started < 2.0 + 1.5


# ===========================================================================
# Tests: command line
# ===========================================================================


def test_cli__no_traceback_for_odd_server_strings(cli: Any, httpserver: HTTPServer, token_env: None) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_data(
        b'{"id": 1, "uuid": "u", "username": "\\ud800bad", "authToken": "odd-token-1"}',
        content_type="application/json")
    code, out, err = cli("whoami")
    assert (code, err) == (0, "")
    assert out.startswith("username: \ufffdbad\n")


@pytest.mark.parametrize(
    ("doc", "reason"),
    [({**PIN_DOC, "clientIdentifier": "another-client"}, "the PIN is for another client identifier"),
     ({**PIN_DOC, "code": ""}, "'code' is missing or has the wrong type")],
    ids=["other-client", "empty-code"],
)
def test_cli__link_refuses_odd_pins_without_a_traceback(cli: Any, httpserver: HTTPServer, doc: Any,
                                                        reason: str) -> None:
    httpserver.expect_request("/api/v2/pins", method="POST").respond_with_json(doc, status=201)
    code, out, err = cli("--client-id", CLIENT_ID, "link", "--oauth")
    assert (code, out) == (7, "")
    assert err == f"plexauth: error: POST /api/v2/pins answered 201 with a body that could not be used: {reason}\n"


def test_cli__unexpected_failures_are_one_line_without_v(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, token_env: None
) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_json(ACCOUNT)
    class Odd(io.StringIO):  # a stream that fails in a way nothing foresees
        def write(self, text: str) -> int:
            raise RuntimeError(TOKEN)

    monkeypatch.setattr(sys, "stdout", Odd())
    assert cli("whoami") == (1, "", "plexauth: error: unexpected RuntimeError; run again with -v to see where\n")
    code, _, err = cli("-v", "whoami")
    assert code == 1
    assert "Traceback (most recent call last)" in err  # masked: the cli fixture finds no TOKEN in it
    assert err.endswith("plexauth: error: unexpected RuntimeError\n")
    closed = io.StringIO()
    closed.close()
    for stdout in (closed, None):  # `plexauth whoami >&-`, while running or from the start
        monkeypatch.setattr(sys, "stdout", stdout)
        assert cli("whoami") == (1, "", "plexauth: error: cannot write to standard output (it is closed)\n")


def test_cli__output_fits_a_terminal_of_any_encoding(httpserver: HTTPServer, tmp_path: Any) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_json({**ACCOUNT, "username": "J\u00fcrgen \u6771\u4eac"})
    env = {**os.environ, "PLEX_TOKEN": TOKEN, "PLEX_TV_URL": httpserver.url_for("/api/v2"),
           "PLEX_CLIENT_IDENTIFIER": CLIENT_ID, "PYTHONIOENCODING": "ascii"}
    result = subprocess.run([sys.executable, "-m", "plexauth", "whoami"], capture_output=True, text=True, env=env,
                            timeout=60, cwd=os.path.dirname(os.path.abspath(plexauth.__file__)), check=False)
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout.startswith("username: J\\xfcrgen \\u6771\\u4eac\n")


@pytest.mark.parametrize("command", ["sign-in", "link"])
def test_cli__a_token_that_cannot_be_saved_is_revoked_not_lost(cli: Any, httpserver: HTTPServer,
                                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                                               command: str) -> None:
    plex_tv = FakePlexTV(httpserver, pending=0)
    plex_tv.tokens = {AUTH_TOKEN, PIN_TOKEN}
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    monkeypatch.setenv("PLEX_CLIENT_IDENTIFIER", CLIENT_ID)
    monkeypatch.setenv("PLEX_LOGIN", "me")
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    target = tmp_path / "token"
    with file_writes_fail():
        code, out, err = cli(command, "--save-token", str(target))
    assert (code, out) == (1, "")
    assert err.endswith(f"plexauth: error: cannot write the new token to {target} (File too large); "
                        "it was revoked, so that no working token is left behind; sign in again\n")
    assert plex_tv.tokens == ({PIN_TOKEN} if command == "sign-in" else {AUTH_TOKEN})  # counted by the server
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left


def test_cli__a_token_that_can_be_neither_saved_nor_revoked_is_said_so(cli: Any, fault_server: Any,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     tmp_path: Any) -> None:
    def script(conn: socket.socket, request: Incoming) -> bool:
        conn.sendall(http_answer(503) if request.method == "DELETE" else http_answer(201, json.dumps(ACCOUNT).encode()))
        return True

    server = fault_server(keep_alive(script))
    monkeypatch.setenv("PLEX_TV_URL", f"http://127.0.0.1:{server.port}/api/v2")
    monkeypatch.setenv("PLEX_CLIENT_IDENTIFIER", CLIENT_ID)
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    with file_writes_fail():
        code, _, err = cli("sign-in", "--login", "me", "--save-token", str(tmp_path / "t"))
    assert code == 1
    assert err.endswith("it could not be revoked either: remove the device in the Plex app's settings\n")


@pytest.mark.parametrize(
    ("how", "wrong"),
    [
        ("symlink-to-dev-zero", "file {kept}: it is a symbolic link"),
        ("world-writable", "file {kept}: it is readable or writable by other users (mode 0666)"),
        ("world-readable", "file {kept}: it is readable or writable by other users (mode 0644)"),
        pytest.param("other-owner", "file {kept}: it is owned by another user (uid 4242)",
                     marks=pytest.mark.skipif(os.geteuid() != 0, reason="making another user's file needs root")),
        ("too-large", "file {kept}: it is larger than 4096 bytes"),
        ("folder-world-writable", "folder {folder}: it is writable by other users (mode 0777)"),
        ("fifo", "file {kept}: it is not a regular file"),
    ],
)
def test_cli__kept_files_that_are_not_private_are_refused(
    cli: Any, httpserver: HTTPServer, tmp_path: Any, how: str, wrong: str, token_env: None
) -> None:
    kept_file(tmp_path / "config", how)
    code, out, err = cli("whoami")
    folder = tmp_path / "config" / "plexauth"
    message = wrong.format(kept=folder / "client-id", folder=folder)
    remedy = "chmod 700 it" if how.startswith("folder") else "set PLEX_CLIENT_IDENTIFIER"
    assert (code, out) == (2, "")
    assert err == f"plexauth: error: refusing the kept {message}; remove it, or {remedy}\n"
    assert len(httpserver.log) == 0


def test_cli__kept_client_identifier_that_is_not_text_is_replaced(
    cli: Any, httpserver: HTTPServer, tmp_path: Any, token_env: None
) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_json(ACCOUNT)
    kept_file(tmp_path / "config", "private")
    kept = tmp_path / "config" / "plexauth" / "client-id"
    kept.write_bytes(b"\xff\xfe")
    assert cli("whoami")[0::2] == (0, "")
    made = kept.read_text().strip()  # a new one, kept from then on: not a new device every run
    assert made.startswith("plexauth-")
    assert cli("whoami")[0] == 0
    assert [r.headers["X-Plex-Client-Identifier"] for r in requests_seen(httpserver)] == [made, made]


@pytest.mark.parametrize("verbose", [[], ["-v"]], ids=["quiet", "verbose"])
@pytest.mark.parametrize("form", ["json-every-char", "xml-decimal", "percent-twice", "base64-offset-2", "mixed"])
def test_cli__sign_in_echoes_reach_no_output(cli: Any, fault_server: Any, monkeypatch: pytest.MonkeyPatch,
                                             verbose: list[str], form: str) -> None:
    echoes = " ".join(echo_forms(secret)[form] for secret in (PASSWORD, CODE))
    location = "/api/v2/x?" + urllib.parse.urlencode({"p": PASSWORD})

    def script(conn: socket.socket, request: Incoming) -> bool:
        body = json.dumps({"errors": [{"code": 1001, "message": f"bad {echoes}", "status": 401}]}).encode()
        conn.sendall(http_answer(401, body, {"Location": location}))
        return True

    server = fault_server(keep_alive(script))
    monkeypatch.setenv("PLEX_TV_URL", f"http://127.0.0.1:{server.port}/api/v2")
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    code, out, err = cli(*verbose, "sign-in", "--login", "me", "--code", CODE)  # the fixture checks both streams
    assert (code, out) == (3, "")
    assert "plexauth: error: POST /api/v2/users/signin failed with 401 Unauthorized: bad " in err
    if verbose:
        assert "Traceback" in err
        assert "urllib3.connectionpool" in err


@pytest.mark.parametrize("unit", ["%25252541", "\u20ac", "+"], ids=["escaped-4-times", "non-ascii", "plus"])
def test_cli__printing_a_huge_account_stays_within_64_mib(httpserver: HTTPServer, unit: str) -> None:
    name = unit * ((plexauth.MAX_BODY_BYTES - 200) // len(unit.encode()))
    httpserver.expect_request("/api/v2/user").respond_with_data(json.dumps(
        {"id": 1, "uuid": "u", "username": name, "authToken": "t"}, ensure_ascii=False).encode(),
        content_type="application/json")
    env = {**os.environ, "PLEX_TOKEN": TOKEN, "PLEX_TV_URL": httpserver.url_for("/api/v2"),
           "PLEX_CLIENT_IDENTIFIER": CLIENT_ID}
    result = subprocess.run([sys.executable, "-c", CLI_MEMORY_PROBE], capture_output=True, text=True, env=env,
                            timeout=120, cwd=os.path.dirname(os.path.abspath(plexauth.__file__)), check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout) == [0, 0]


def test_cli__verbose_tracebacks_are_masked_too(cli: Any, fault_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # An echo that only parsing rebuilds: the exception holds it masked, and so does the traceback.
    body = json.dumps({"errors": [{"code": 1001, "message": PASSWORD.replace(" ", "\t")}]}).encode()
    server = fault_server(keep_alive(lambda conn, request: conn.sendall(http_answer(401, body)) is None))
    monkeypatch.setenv("PLEX_TV_URL", f"http://127.0.0.1:{server.port}/api/v2")
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    code, _, err = cli("-v", "sign-in", "--login", "me", "--code", CODE)  # the fixture checks the output
    assert code == 3
    assert "Traceback (most recent call last)" in err


@pytest.mark.parametrize("command", [["sign-in", "--login", "me"], ["sign-in", "--login", "me", "--json"], ["link"]])
def test_cli__a_token_that_cannot_be_printed_is_revoked(cli: Any, httpserver: HTTPServer,
                                                         monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    plex_tv = FakePlexTV(httpserver, pending=0)
    plex_tv.tokens = {AUTH_TOKEN, PIN_TOKEN}
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    monkeypatch.setenv("PLEX_CLIENT_IDENTIFIER", CLIENT_ID)
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    closed = io.StringIO()
    closed.close()
    # `plexauth sign-in >&-`: closed while running, or from the start (sys.stdout is then None).
    monkeypatch.setattr(sys, "stdout", closed if "--json" in command else None)
    code, _, err = cli(*command)
    assert code == 1
    assert err.endswith("plexauth: error: cannot print the new token (it is closed); it was revoked, so that no "
                        "working token is left behind; sign in again\n")
    assert plex_tv.tokens == ({PIN_TOKEN} if command[0] == "sign-in" else {AUTH_TOKEN})


def test_cli__sign_in_prints_token(cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    httpserver.expect_request("/api/v2/users/signin", method="POST").respond_with_json(ACCOUNT, status=201)
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    assert cli("sign-in", "--login", "me@example.com", shown=(AUTH_TOKEN,)) == (0, AUTH_TOKEN + "\n", "")
    (request,) = requests_seen(httpserver)
    assert request.form.to_dict() == {"login": "me@example.com", "password": PASSWORD, "rememberMe": "false"}
    assert "X-Plex-Token" not in request.headers


@pytest.mark.parametrize("echo", ["12345", "12345.0", "1.2345e4", "012345"])
def test_cli__a_code_echoed_as_a_number_shorter_than_it_is_not_shown(cli: Any, httpserver: HTTPServer,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      echo: str) -> None:
    # "12345" is shorter than the code "012345": a text too short for the code itself was shown unlooked at.
    httpserver.expect_request("/api/v2/users/signin").respond_with_json({**ACCOUNT, "title": echo}, status=201)
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    code, out, _ = cli("sign-in", "--login", "me", "--code", "012345", "--json", shown=(AUTH_TOKEN,))
    assert (code, json.loads(out)["title"]) == (0, "***")


@pytest.mark.parametrize("source", ["file", "stdin", "env-login"])
def test_cli__sign_in_password_sources(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, source: str
) -> None:
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    args = ["sign-in", "--login", "me", "--remember-me"]
    if source == "file":
        (tmp_path / "pw").write_text(PASSWORD + "\n", encoding="utf-8")
        args += ["--password-file", str(tmp_path / "pw")]
    elif source == "stdin":
        monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
        args += ["--password-stdin"]
    else:
        monkeypatch.setenv("PLEX_LOGIN", "me")
        monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
        args = ["sign-in", "--remember-me"]
    code, out, _ = cli(*args, shown=(AUTH_TOKEN,))
    assert (code, out) == (0, AUTH_TOKEN + "\n")
    (request,) = requests_seen(httpserver)
    assert (request.form["login"], request.form["password"], request.form["rememberMe"]) == ("me", PASSWORD, "true")


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_cli__a_password_too_long_to_read_is_refused_not_cut(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, source: str
) -> None:
    long = "p" * 4097 + "\n"  # 4 096 characters are read
    if source == "file":
        (tmp_path / "pw").write_text(long, encoding="utf-8")
        args, where = ["--password-file", str(tmp_path / "pw")], f"file {str(tmp_path / 'pw')!r}"
    else:
        monkeypatch.setattr(sys, "stdin", io.StringIO(long))
        args, where = ["--password-stdin"], "from standard input"
    code, out, err = cli("sign-in", "--login", "me", *args)
    assert (code, out) == (2, "")
    assert err == f"plexauth: error: the password {where} is longer than 4096 characters\n"
    assert httpserver.log == []


def test_cli__sign_in_without_password_and_no_tty_exits_2(cli: Any, httpserver: HTTPServer) -> None:
    code, out, err = cli("sign-in", "--login", "me")
    assert (code, out) == (2, "")
    assert err == (
        "plexauth: error: no password: set PLEX_PASSWORD, or use --password-file or --password-stdin "
        "(standard input is not a terminal, so there is no prompt)\n"
    )
    assert cli("sign-in")[2] == "plexauth: error: no login: use --login or set PLEX_LOGIN\n"
    assert httpserver.log == []


def test_cli__sign_in_prompts_on_a_tty(cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # 1029 first; on a terminal the code is asked for and the sign-in sent again with it.
    httpserver.expect_ordered_request("/api/v2/users/signin").respond_with_json(TWO_FACTOR, status=401)
    httpserver.expect_ordered_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    monkeypatch.setattr(sys, "stdin", FakeTTY("me@example.com\n"))
    answers = {"Password: ": PASSWORD, "Verification code: ": CODE + " "}
    prompts: list[str] = []

    def getpass(prompt: str, stream: Any = None) -> str:
        prompts.append(prompt)
        assert stream is sys.stderr  # prompts never go to stdout
        return answers[prompt]

    monkeypatch.setattr("getpass.getpass", getpass)
    code, out, err = cli("sign-in", shown=(AUTH_TOKEN,))
    assert (code, out, err) == (0, AUTH_TOKEN + "\n", "Login (email or username): ")
    assert prompts == ["Password: ", "Verification code: "]
    first, second = requests_seen(httpserver)
    assert "verificationCode" not in first.form
    assert (second.form["login"], second.form["verificationCode"]) == ("me@example.com", CODE)


@pytest.mark.parametrize("tty", [False, True], ids=["no-tty", "code-given"])
def test_cli__sign_in_two_factor_exits_4(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tty: bool
) -> None:
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(TWO_FACTOR, status=401)
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    args = ["sign-in", "--login", "me"]
    if tty:  # a code was given and is wrong: not asked again
        monkeypatch.setattr(sys, "stdin", FakeTTY(""))
        args += ["--code", CODE]
    code, out, err = cli(*args)
    assert (code, out) == (4, "")
    # Off a terminal, the error names the option; a wrong code given with it is not asked for again.
    hint = ("the code given with --code was not accepted" if tty
            else "give it with --code (there is no prompt off a terminal)")
    assert err == (
        "plexauth: error: POST /api/v2/users/signin failed with 401 Unauthorized: "
        f"Please enter the verification code (code 1029): {hint}\n"
    )
    assert len(httpserver.log) == 1


def test_cli__sign_in_json_and_save_token(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    code, out, _ = cli("sign-in", "--login", "me", "--json", shown=(AUTH_TOKEN,))
    assert code == 0
    summary = json.loads(out)  # the new token is the answer: never made and thrown away
    assert (summary["username"], summary["id"], summary["authToken"]) == ("Username", 13692262, AUTH_TOKEN)
    saved = tmp_path / "saved"
    code, out, _ = cli("--json", "sign-in", "--login", "me", "--save-token", str(saved))
    assert (code, "authToken" in json.loads(out), saved.read_text()) == (0, False, AUTH_TOKEN + "\n")
    # Saved and not asked for, the new token is masked where the server repeats it.
    httpserver.clear()
    httpserver.expect_request("/api/v2/users/signin").respond_with_json({**ACCOUNT, "username": AUTH_TOKEN},
                                                                        status=201)
    code, out, _ = cli("--json", "sign-in", "--login", "me", "--save-token", str(saved))
    assert (code, json.loads(out)["username"]) == (0, "***")
    httpserver.clear()
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    code, out, _ = cli("--json", "sign-in", "--login", "me", "--save-token", str(saved), "--show-token",
                       shown=(AUTH_TOKEN,))
    assert json.loads(out)["authToken"] == AUTH_TOKEN
    saved.unlink()
    target = tmp_path / "token"
    target.write_text("old")
    code, out, err = cli("sign-in", "--login", "me", "--save-token", str(target))
    assert (code, out, err) == (0, "", f"plexauth: token saved to {target}\n")
    assert target.read_text() == AUTH_TOKEN + "\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config", "token"]  # no temporary file left
    before = len(httpserver.log)
    missing = tmp_path / "missing" / "token"
    code, _, err = cli("sign-in", "--login", "me", "--save-token", str(missing))
    assert (code, err) == (2, f"plexauth: error: cannot write {missing}: {missing.parent} is not a folder "
                              "this user can write to\n")
    assert len(httpserver.log) == before  # refused before signing in: no token made and lost
    (tmp_path / "token.new").mkdir()  # a folder where the file should go: refused before signing in too
    code, _, err = cli("sign-in", "--login", "me", "--save-token", str(tmp_path / "token.new"))
    assert (code, err) == (2, f"plexauth: error: cannot write {tmp_path / 'token.new'}: it is not a regular file "
                              "(a folder, a link...)\n")
    assert len(httpserver.log) == before


@pytest.mark.parametrize("where", ["env", "env-file", "option"])
def test_cli__whoami(cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, where: str):
    httpserver.expect_request("/api/v2/user").respond_with_json(ACCOUNT)
    (tmp_path / "token").write_text(TOKEN + "\n")
    args = ["whoami"]
    if where == "env":
        monkeypatch.setenv("PLEX_TOKEN", TOKEN)
    elif where == "env-file":
        monkeypatch.setenv("PLEX_TOKEN_FILE", str(tmp_path / "token"))
    else:
        args += ["--token-file", str(tmp_path / "token")]
    code, out, err = cli(*args)
    assert (code, err) == (0, "")
    assert out == (
        "username: Username\nemail: username@email.com\nid: 13692262\nsubscription: active (lifetime)\n"
        "token expires: 2024-05-21T08:59:00+00:00\n"
    )
    assert requests_seen(httpserver)[0].headers["X-Plex-Token"] == TOKEN
    code, out, _ = cli(*args, "--json")
    assert json.loads(out) == {
        "id": 13692262, "uuid": "dae343c1f45beb4f", "username": "Username", "title": "UsernameTitle",
        "email": "username@email.com", "tokenExpiresAt": "2024-05-21T08:59:00+00:00",
        "subscription": {"active": True, "plan": "lifetime", "status": "Active",
                         "features": ["webhooks", "a-feature-added-tomorrow"]},
    }


def test_cli__whoami_minimal_account(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, token_env: None
) -> None:
    monkeypatch.delenv("PLEX_SERVER_URL")  # not needed by whoami
    account = {"id": 1, "uuid": "u", "username": "x", "authToken": AUTH_TOKEN, "subscription": {"active": False}}
    httpserver.expect_request("/api/v2/user").respond_with_json(account)
    assert cli("whoami")[1] == "username: x\nemail: -\nid: 1\nsubscription: inactive (?)\ntoken expires: unknown\n"
    httpserver.clear()
    httpserver.expect_request("/api/v2/user").respond_with_json({**account, "subscription": None})
    assert "subscription: none\n" in cli("whoami")[1]


def test_cli__transient_token(cli: Any, httpserver: HTTPServer, token_env: None) -> None:
    httpserver.expect_request("/security/token", query_string="type=delegation&scope=all").respond_with_json(
        {"MediaContainer": {"token": TRANSIENT}}
    )
    assert cli("transient-token", shown=(TRANSIENT,)) == (0, TRANSIENT + "\n", "")
    assert json.loads(cli("transient-token", "--json", shown=(TRANSIENT,))[1]) == {"token": TRANSIENT}


def test_cli__source_info(cli: Any, httpserver: HTTPServer, token_env: None) -> None:
    httpserver.expect_request("/security/resources").respond_with_json(SOURCE)
    code, out, err = cli("source-info", "server://0123456789abcdef")
    assert (code, err) == (0, "")
    assert out == (
        "name: Living Room\nclient identifier: 0123456789abcdef\n"
        "connection: https://192-0-2-10.abc.plex.direct:32400 (local)\n"
        "connection: https://198-51-100-7.abc.plex.direct:8443 (relay)\n"
    )
    code, out, _ = cli("source-info", "server://0123456789abcdef", "--show-token", "--refresh", shown=(ACCESS_TOKEN,))
    assert out.endswith(f"access token: {ACCESS_TOKEN}\n")
    assert requests_seen(httpserver)[-1].args["refresh"] == "1"
    data = json.loads(cli("source-info", "server://x", "--json")[1])
    assert "accessToken" not in data
    assert data["connections"][1] == {"uri": "https://198-51-100-7.abc.plex.direct:8443", "protocol": "https",
                                      "address": "198.51.100.7", "port": 8443, "local": False, "relay": True}
    httpserver.clear()
    httpserver.expect_request("/security/resources").respond_with_json({"MediaContainer": {"Device": {"x": 1}}})
    assert cli("source-info", "provider://x", "--show-token")[1] == (
        "name: -\nclient identifier: -\naccess token: -\n"
    )
    httpserver.clear()
    httpserver.expect_request("/security/resources").respond_with_json(
        {"MediaContainer": {"Device": {"Connection": [{"local": False}]}}}
    )
    assert "connection: - (remote)\n" in cli("source-info", "server://x")[1]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"errors": [{"code": 1001, "message": "User could not be authenticated"}]}, 3),
        (401, TWO_FACTOR, 4),
        (429, {"errors": [{"code": 1003, "message": "Rate limit exceeded"}]}, 5),
        (200, "not json", 7),
        (500, "boom", 1),
        (404, "", 1),
        (502, "", 5),
        (503, "<html>down for maintenance</html>", 5),
        (504, "", 5),
    ],
    ids=["unauthorized", "two-factor", "rate-limited", "unexpected", "server-error", "not-found", "bad-gateway",
         "unavailable", "gateway-timeout"],
)
def test_cli__exit_codes(
    cli: Any, httpserver: HTTPServer, status: int, body: Any, expected: int, token_env: None
) -> None:
    data = body if isinstance(body, str) else json.dumps(body)
    httpserver.expect_request("/api/v2/user").respond_with_data(data, status=status, headers={"Retry-After": "60"})
    code, out, err = cli("whoami", "--timeout", "5", "--retries", "0")
    assert (code, out) == (expected, "")
    assert err.startswith("plexauth: error: GET /api/v2/user ")
    assert err.count("\n") == 1  # one line, no traceback


def test_cli__network_error_exits_6(cli: Any, token_env: None) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    code, _, err = cli("--server", f"http://127.0.0.1:{port}", "transient-token")
    assert code == 6
    assert err == (f"plexauth: error: GET /security/token could not complete: http://127.0.0.1:{port} refused "
                   "the connection\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["whoami", "--token", TOKEN], "--token takes no value: a secret on the command line shows in ps"),
        (["sign-in", f"--password={PASSWORD}"], "--password takes no value"),
        (["login", "--password", PASSWORD], "--password takes no value"),
        (["whoami", "--token-f", "x"], "unrecognized arguments: --token-f"),
        (["whoami"], "no token: run plexauth login, or set PLEX_TOKEN_FILE or PLEX_TOKEN, or use --token-file"),
        (["whoami", "--token-file", "/no/such/file"], "cannot read the token file '/no/such/file': No such file"),
        (["--server", "ftp://x", "transient-token"], "--server must be an http:// or https:// URL"),
        (["whoami", "--timeout", "0"], "--timeout must be a positive number of seconds, got 0.0"),
        (["link", "--wait", "0"], "--wait must be a positive number of seconds, got 0.0"),
        (["link", "--save-token", "/no/such/folder/token"], "cannot write /no/such/folder/token: /no/such/folder "
                                                            "is not a folder this user can write to"),
        (["ping"], "no token: run plexauth login"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        ([], "the following arguments are required: COMMAND"),
    ],
    ids=[
        "token-argument", "password-argument", "password-value", "no-abbreviations", "no-token", "token-file-missing",
        "bad-url",
        "bad-timeout", "link-bad-wait", "link-unwritable-token-file", "ping-no-token", "bad-command", "nothing",
    ],
)
def test_cli__usage_errors_exit_2(
    cli: Any, monkeypatch: pytest.MonkeyPatch, httpserver: HTTPServer, argv: list[str], message: str
) -> None:
    if not message.startswith("no token"):
        monkeypatch.setenv("PLEX_TOKEN", TOKEN)
    code, out, err = cli(*argv)
    assert (code, out) == (2, "")
    assert message in err
    assert httpserver.log == []


def test_cli__empty_token_file_and_password(cli: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    (tmp_path / "empty").write_text("\n")
    assert cli("whoami", "--token-file", str(tmp_path / "empty"))[2] == (
        f"plexauth: error: the token from --token-file {tmp_path / 'empty'} is empty\n"
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    assert cli("sign-in", "--login", "me", "--password-stdin")[2] == "plexauth: error: the password is empty\n"


def test_cli__help_and_version(cli: Any) -> None:
    code, out, _ = cli("--help")
    assert code == 0
    for line in ("3  unauthorized", "4  plex.tv asks for a verification code", "5  try again later", "6  network",
                 "7  the server's answer could not be used", "never an argument"):
        assert line in out
    assert cli("--version") == (0, f"plexauth {plexauth.__version__}\n", "")


def test_cli__client_identifier_kept_0600_and_reused(
     cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any , token_env: None
) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_json(ACCOUNT)
    assert cli("whoami")[0] == 0
    assert cli("whoami")[0] == 0
    kept = tmp_path / "config" / "plexauth" / "client-id"
    first, second = (r.headers["X-Plex-Client-Identifier"] for r in requests_seen(httpserver))
    assert first == second == kept.read_text().strip()
    assert first.startswith("plexauth-")
    assert kept.stat().st_mode & 0o777 == 0o600
    assert kept.parent.stat().st_mode & 0o777 == 0o700
    monkeypatch.setenv("PLEX_CLIENT_IDENTIFIER", "from-env")
    cli("whoami")
    cli("whoami", "--client-id", "from-option")
    assert [r.headers["X-Plex-Client-Identifier"] for r in requests_seen(httpserver)][2:] == ["from-env", "from-option"]


def test_cli__client_identifier_unwritable_or_unreadable(
     cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any , token_env: None
) -> None:
    httpserver.expect_request("/api/v2/user").respond_with_json(ACCOUNT)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "file"))  # a file where a folder should be
    code, _, err = cli("whoami")
    assert code == 0
    assert "plexauth: warning: cannot keep the client identifier in " in err
    (tmp_path / "cfg" / "plexauth" / "client-id").mkdir(parents=True)  # a folder where the file should be
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    code, _, err = cli("whoami")
    assert code == 2
    kept = tmp_path / "cfg" / "plexauth" / "client-id"
    assert err == f"plexauth: error: refusing the kept file {kept}: it is not a regular file; " \
        "remove it, or set PLEX_CLIENT_IDENTIFIER\n"


def test_cli__client_identifier_written_first_by_another_run(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two first runs at once: the one that links second reads the first one's identifier.
    path = tmp_path / "client-id"
    plexauth._write_private(str(path), "first", replace=False)
    plexauth._write_private(str(path), "second", replace=False)
    assert path.read_text() == "first\n"
    assert [p.name for p in tmp_path.iterdir()] == ["client-id"]


def test_cli__verbose_logs_without_secrets(cli: Any, httpserver: HTTPServer, token_env: None):
    httpserver.expect_request("/api/v2/user").respond_with_json({"errors": [{"code": 1001}]}, status=401)
    code, out, err = cli("-v", "whoami")
    assert (code, out) == (3, "")
    assert "plexauth: GET /api/v2/user -> 401 (" in err
    assert "Traceback (most recent call last)" in err
    # main() took its handlers away again.
    assert all(isinstance(h, logging.NullHandler) for h in logging.getLogger("plexauth").handlers)
    assert logging.getLogger("urllib3").level == logging.NOTSET


def test_cli__entry_points(httpserver: HTTPServer, tmp_path: Any) -> None:
    # Once each: python -m plexauth, the console script, and the file alone in an empty folder.
    httpserver.expect_request("/api/v2/user").respond_with_json(ACCOUNT)
    (tmp_path / "token").write_text(TOKEN)
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(plexauth.__file__, alone / "plexauth.py")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "PLEX_TOKEN_FILE": str(tmp_path / "token"),
        "PLEX_TV_URL": httpserver.url_for("/api/v2"),
        "PLEX_CLIENT_IDENTIFIER": CLIENT_ID,
        "HOME": str(tmp_path),
    }
    script = os.path.join(os.path.dirname(sys.executable), "plexauth")
    commands = [([sys.executable, "-m", "plexauth", "whoami"], None)]
    commands.append(([sys.executable, "plexauth.py", "whoami"], alone))
    if os.path.exists(script):  # installed (pip install -e .), as in the README's test command
        commands.append(([script, "whoami"], None))
    for argv, cwd in commands:
        result = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False)
        assert (result.returncode, result.stderr) == (0, ""), argv
        assert result.stdout.startswith("username: Username\n")
        assert_no_secret(result.stdout + result.stderr)
    assert len(httpserver.log) == len(commands)


def test_cli__interrupted_prompt_and_odd_stdin(cli: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", FakeTTY(""))

    def interrupted(prompt: str, stream: Any = None) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr("getpass.getpass", interrupted)
    assert cli("sign-in", "--login", "me") == (130, "", "")
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdin", closed)  # isatty() raises ValueError: not a terminal
    assert cli("sign-in", "--login", "me")[0] == 2
    monkeypatch.setattr(sys, "stdin", None)  # pythonw, or a service without one
    assert cli("sign-in", "--login", "me")[0] == 2


def test_cli__link_prints_code_on_stderr_and_token_on_stdout(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    plex_tv = FakePlexTV(httpserver, pending=1)
    monkeypatch.setenv("PLEX_CLIENT_IDENTIFIER", CLIENT_ID)
    # -v: the DEBUG log of every request goes to stderr too, which the fixture checks for the token.
    code, out, err = cli("-v", "link", shown=(PIN_TOKEN,))
    assert (code, out) == (0, PIN_TOKEN + "\n")
    assert "plexauth: go to https://plex.tv/link and enter the code A1B2 (waiting up to 300 s)\n" in err
    assert "GET /api/v2/pins/1000 -> 200" in err
    assert plex_tv.checks == 2


def test_cli__link_oauth_save_token_and_json(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    FakePlexTV(httpserver, pending=0)
    monkeypatch.setenv("PLEX_CLIENT_IDENTIFIER", CLIENT_ID)
    target = tmp_path / "token"
    code, out, err = cli("link", "--oauth", "--wait", "60", "--save-token", str(target))
    assert (code, out) == (0, "")
    assert err == (
        "plexauth: open this address in a browser and sign in (waiting up to 60 s):\n"
        f"https://app.plex.tv/auth#?clientID={CLIENT_ID}&code=pj6rvq4k3lns1bcxfa2x0m9ye"
        "&context[device][product]=plexauth\n"
        f"plexauth: token saved to {target}\n"
    )
    assert target.read_text() == PIN_TOKEN + "\n"
    assert target.stat().st_mode & 0o777 == 0o600
    assert requests_seen(httpserver)[0].args.to_dict() == {"strong": "true"}
    code, out, _ = cli("link", "--json", shown=(PIN_TOKEN,))
    assert (code, json.loads(out)) == (0, {"authToken": PIN_TOKEN})


@pytest.mark.parametrize(
    ("plex_tv", "argv", "message"),
    [
        ({"gone": True}, [], "GET /api/v2/pins/1000 failed with 404 Not Found: Code not found or expired "
                             "(code 1020): PIN 1000 has expired, or plex.tv does not know it"),
        ({"pending": None}, ["--wait", "1"], "PIN 1000 was not approved within 1 s"),
    ],
    ids=["expired", "timeout"],
)
def test_cli__link_expired_exits_8(
    cli: Any, httpserver: HTTPServer, plex_tv: dict[str, Any], argv: list[str], message: str
) -> None:
    FakePlexTV(httpserver, **plex_tv)
    code, out, err = cli("link", *argv)
    assert (code, out) == (8, "")
    assert err.endswith(f"\nplexauth: error: {message}\n")


def test_cli__ping_and_sign_out(cli: Any, httpserver: HTTPServer, token_env: None) -> None:
    plex_tv = FakePlexTV(httpserver)
    assert cli("ping") == (0, "", "")  # silent when alive: a nightly cron job mails nothing
    assert cli("sign-out") == (0, "", "plexauth: signed out: the token no longer works\n")
    assert plex_tv.tokens == set()
    assert cli("ping") == (
        3, "", "plexauth: error: GET /api/v2/ping failed with 401 Unauthorized: User could not be authenticated "
        "(code 1001)\n"
    )


def test_cli__sign_in_on_a_real_terminal(httpserver: HTTPServer, tmp_path: Any) -> None:
    # A pseudo-terminal on stdin and stderr: the prompts appear there, the
    # terminal echoes the login but neither the password nor the code, and the
    # token goes to stdout (a pipe).
    import pty
    import select

    httpserver.expect_ordered_request("/api/v2/users/signin").respond_with_json(TWO_FACTOR, status=401)
    httpserver.expect_ordered_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "PYTHONPATH": os.path.dirname(plexauth.__file__),
        "PLEX_TV_URL": httpserver.url_for("/api/v2"),
        "PLEX_CLIENT_IDENTIFIER": CLIENT_ID,
    }
    master, slave = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "plexauth", "sign-in"], stdin=slave, stdout=subprocess.PIPE, stderr=slave, env=env,
        start_new_session=True,
    )
    os.close(slave)
    seen = b""

    def expect(text: bytes) -> None:
        nonlocal seen
        while text not in seen:
            ready, _, _ = select.select([master], [], [], 30)
            assert ready, f"no {text!r} on the terminal; it shows {seen!r}"
            seen += os.read(master, 4096)

    try:
        expect(b"Login (email or username): ")
        os.write(master, b"me@example.com\n")
        expect(b"Password: ")
        os.write(master, PASSWORD.encode() + b"\n")
        expect(b"Verification code: ")
        os.write(master, CODE.encode() + b"\n")
        out, _ = child.communicate(timeout=30)
    finally:
        child.kill()
        child.wait()
        os.close(master)
    assert child.returncode == 0
    assert out == AUTH_TOKEN.encode() + b"\n"
    assert b"me@example.com" in seen  # echoed, as typed
    assert_no_secret(seen.decode("utf-8", "replace"))
    second = requests_seen(httpserver)[1]
    assert (second.form["password"], second.form["verificationCode"]) == (PASSWORD, CODE)


# ===========================================================================
# Tests: the account's servers and Home users
# ===========================================================================


@pytest.mark.parametrize(("body", "content_type"), [(json.dumps(RESOURCES), "application/json"),
                                                    (RESOURCES_XML, "application/xml")], ids=["json", "xml"])
def test_resources__exact_request_and_decoded(httpserver: HTTPServer, config: Config, body: str,
                                              content_type: str) -> None:
    httpserver.expect_request("/api/v2/resources", method="GET").respond_with_data(body, content_type=content_type)
    server, phone = plexauth.get_resources(config)
    (request,) = requests_seen(httpserver)
    assert request.args.to_dict() == {"includeHttps": "1", "includeRelay": "1", "includeIPv6": "0"}
    assert request.headers["X-Plex-Token"] == TOKEN
    utc = datetime.timezone.utc
    assert (server.name, server.client_identifier, server.provides, server.owner_id, server.owned) == (
        "Living Room", "0123456789abcdef", ("server", "sync"), None, True)
    assert (server.created_at, server.last_seen_at) == (datetime.datetime(2019, 4, 26, 12, 32, 20, tzinfo=utc),
                                                        datetime.datetime(2026, 11, 30, 8, 0, tzinfo=utc))
    assert (server.access_token, server.https_required, server.relay, server.nat_loopback_supported) == (
        ACCESS_TOKEN, True, True, False)
    local, ipv6 = server.connections
    assert (local.uri, local.local, local.ipv6, ipv6.ipv6, ipv6.port) == (
        "https://192-0-2-10.abc.plex.direct:32400", True, False, True, 32400)
    assert (phone.provides, phone.owner_id, phone.owned, phone.connections) == (("client", "player"), 99, False, ())
    assert ACCESS_TOKEN not in repr(server)
    assert "access_token='***'" in repr(server)
    plexauth.get_resources(config, include_https=False, include_relay=False, include_ipv6=True)
    assert requests_seen(httpserver)[1].args.to_dict() == {"includeHttps": "0", "includeRelay": "0",
                                                           "includeIPv6": "1"}
    with pytest.raises(TypeError, match="include_ipv6 must be a bool"):
        plexauth.get_resources(config, include_ipv6=1)  # type: ignore[arg-type]


def test_resources__json_and_xml_decode_equal(httpserver: HTTPServer, config: Config) -> None:
    httpserver.expect_oneshot_request("/api/v2/resources").respond_with_json(RESOURCES)
    httpserver.expect_oneshot_request("/api/v2/resources").respond_with_data(RESOURCES_XML)
    assert plexauth.get_resources(config) == plexauth.get_resources(config)


def test_resources__legacy_xml_devices_decode_their_connections(httpserver: HTTPServer, config: Config) -> None:
    # plex.tv's legacy list: <MediaContainer><Device ...><Connection .../></Device></MediaContainer>.
    legacy = (f'<MediaContainer size="1"><Device name="Living Room" clientIdentifier="0123456789abcdef" '
              f'provides="server" owned="1" accessToken="{ACCESS_TOKEN}" createdAt="1556281940">'
              '<Connection protocol="https" address="192.0.2.10" port="32400" '
              'uri="https://192-0-2-10.abc.plex.direct:32400" local="1"/>'
              '<Connection protocol="https" address="198.51.100.7" port="32400" '
              'uri="https://198-51-100-7.abc.plex.direct:32400" local="0"/></Device></MediaContainer>')
    httpserver.expect_request("/api/v2/resources").respond_with_data(legacy, content_type="application/xml")
    (server,) = plexauth.get_resources(config)
    assert [(c.uri, c.local, c.port) for c in server.connections] == [
        ("https://192-0-2-10.abc.plex.direct:32400", True, 32400),
        ("https://198-51-100-7.abc.plex.direct:32400", False, 32400)]
    assert server.created_at == datetime.datetime(2019, 4, 26, 12, 32, 20, tzinfo=datetime.timezone.utc)


def test_resources__one_without_a_client_identifier_is_a_response_error(httpserver: HTTPServer,
                                                                        config: Config) -> None:
    httpserver.expect_request("/api/v2/resources").respond_with_json([{"name": "x"}])
    with raises(ResponseError) as info:
        plexauth.get_resources(config)
    assert info.value.reason == "'clientIdentifier' is missing or has the wrong type"


def test_resources__long_tokens_are_looked_through_in_time(httpserver: HTTPServer, config: Config) -> None:
    # Runs of base64 without "=" as long as a token may be: each looked through in time linear in its length.
    resources = [{**RESOURCES[1], "clientIdentifier": f"c{number}", "accessToken": "A" * 8000}
                 for number in range(30)]
    httpserver.expect_request("/api/v2/resources").respond_with_json(resources)
    started = time.monotonic()
    assert [found.access_token for found in plexauth.get_resources(config)] == ["A" * 8000] * 30
    assert time.monotonic() - started < 5  # a tenth of a second here; 21 s when each took time quadratic in it


#: A password of characters that Windows-1252 has and Latin-1 has not (a
#: typographic apostrophe and dash, as autocorrect puts in pass phrases).
WINDOWS_PASSWORD = "It\u2019s-my\u2013secret"
#: One whose UTF-8 holds bytes Windows-1252 leaves undefined (0x81 for "\u0441").
CYRILLIC_PASSWORD = "\u0441\u0435\u043a\u0440\u0435\u0442-1"
JAPANESE_PASSWORD = "\u30d1\u30b9\u30ef\u30fc\u30c9\u79d8\u5bc6"


CHARSET_FORMS = {
    "percent": (WINDOWS_PASSWORD, "".join(f"%{byte:02X}" for byte in WINDOWS_PASSWORD.encode("cp1252"))),
    "hex": (WINDOWS_PASSWORD, WINDOWS_PASSWORD.encode("cp1252").hex()),
    "base64": (WINDOWS_PASSWORD, base64.b64encode(WINDOWS_PASSWORD.encode("cp1252")).decode()),
    "read-as-latin-1": (WINDOWS_PASSWORD, WINDOWS_PASSWORD.encode("cp1252").decode("latin-1")),
    # Its UTF-8 read as Windows-1252 or Latin-1 (mojibake), as they are or escaped.
    "mojibake": (WINDOWS_PASSWORD, as_windows_1252(WINDOWS_PASSWORD.encode())),
    "mojibake-percent": (WINDOWS_PASSWORD, urllib.parse.quote(as_windows_1252(WINDOWS_PASSWORD.encode()))),
    "mojibake-base64": (WINDOWS_PASSWORD,
                        base64.b64encode(as_windows_1252(WINDOWS_PASSWORD.encode()).encode()).decode()),
    "mojibake-latin-1-json": (WINDOWS_PASSWORD, json.dumps(WINDOWS_PASSWORD.encode().decode("latin-1"))[1:-1]),
    "mojibake-twice": (WINDOWS_PASSWORD, as_windows_1252(as_windows_1252(WINDOWS_PASSWORD.encode()).encode())),
    "mojibake-undefined-bytes": (CYRILLIC_PASSWORD, as_windows_1252(CYRILLIC_PASSWORD.encode())),
    "mojibake-three-times": (WINDOWS_PASSWORD, as_windows_1252(as_windows_1252(as_windows_1252(
        WINDOWS_PASSWORD.encode()).encode()).encode())),
    "mojibake-in-part": (CYRILLIC_PASSWORD, as_windows_1252(CYRILLIC_PASSWORD[:4].encode()) + CYRILLIC_PASSWORD[4:]),
    # The charsets of servers in other locales: its UTF-8 read in one, or its bytes in one, escaped or in base64.
    "cp1251-mojibake": (CYRILLIC_PASSWORD, CYRILLIC_PASSWORD.encode().decode("cp1251")),
    "koi8-r-percent": (CYRILLIC_PASSWORD, urllib.parse.quote(CYRILLIC_PASSWORD, encoding="koi8-r")),
    "cp1251-base64": (CYRILLIC_PASSWORD, base64.b64encode(CYRILLIC_PASSWORD.encode("cp1251")).decode()),
    "mac-roman-mojibake": (PASSWORD, PASSWORD.encode().decode("mac-roman")),
    "shift-jis-percent": (JAPANESE_PASSWORD, urllib.parse.quote(JAPANESE_PASSWORD, encoding="shift_jis")),
    "gbk-base64": (JAPANESE_PASSWORD, base64.b64encode(JAPANESE_PASSWORD.encode("gbk")).decode()),
    "gbk-mojibake": (JAPANESE_PASSWORD, JAPANESE_PASSWORD.encode().decode("gbk", "replace")),
}


@pytest.mark.parametrize("form", list(CHARSET_FORMS))
def test_signin__a_password_echoed_in_other_charsets_is_neither_shown_nor_taken(fault_server: Any, form: str) -> None:
    password, echo = CHARSET_FORMS[form]
    answers = iter([(401, {"errors": [{"code": 1001, "message": f"wrong password {echo}"}]}),
                    (201, {"id": 1, "uuid": "u", "username": "me", "authToken": echo})])

    def script(conn: socket.socket, request: Incoming) -> bool:
        status, doc = next(answers, (204, None))
        conn.sendall(http_answer(status, json.dumps(doc).encode() if doc else b""))
        return True

    server = fault_server(keep_alive(script))
    config = hostile_config(server.port)
    with raises(UnauthorizedError) as info:
        plexauth.post_users_sign_in_data(config, "me", password)
    exc = info.value
    for text in (str(exc), repr(exc), exc.message or "", exc.body.decode("utf-8", "replace")):
        assert echo not in text
        assert password not in text
    assert exc.message is None or "***" in exc.message
    with raises(ResponseError) as refused:  # as a new token, refused (and revoked)
        plexauth.post_users_sign_in_data(config, "me", password)
    assert refused.value.reason.startswith("a token in it holds a secret the request sent")
    assert echo not in str(refused.value)


@pytest.mark.parametrize("xml", [False, True], ids=["json", "xml"])
def test_home_users__listed(httpserver: HTTPServer, config: Config, xml: bool) -> None:
    body = json.dumps(HOME_USERS)
    if xml:  # plex.tv's older list: <MediaContainer><User .../></MediaContainer>
        body = ('<MediaContainer size="2"><User id="1" uuid="owner-uuid-0001" title="Owner" admin="1" '
                'protected="1"/><User id="2" uuid="kid-uuid-0001" title="Kid" restricted="1" protected="1"/>'
                '</MediaContainer>')
    httpserver.expect_request("/api/v2/home/users", method="GET").respond_with_data(body)
    owner, kid = plexauth.get_home_users(config)
    assert (owner.id, owner.uuid, owner.title, owner.admin, owner.protected) == (
        1, "owner-uuid-0001", "Owner", True, True)
    assert (kid.uuid, kid.restricted, kid.guest if not xml else None) == ("kid-uuid-0001", True, False if not xml
                                                                          else None)
    assert requests_seen(httpserver)[0].headers["X-Plex-Token"] == TOKEN


def test_home_users__switch_sends_the_pin_only_in_its_query(httpserver: HTTPServer, config: Config,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch", method="POST").respond_with_json(
        {**ACCOUNT, "authToken": PIN_TOKEN}, status=201)
    kid = plexauth.HomeUser(id=2, uuid="kid-uuid-0001")
    assert plexauth.switch_home_user(config, kid, pin=HOME_PIN) == PIN_TOKEN
    assert plexauth.switch_home_user(config, kid) == PIN_TOKEN
    with_pin, without = requests_seen(httpserver)
    assert with_pin.args.to_dict() == {"pin": HOME_PIN}
    assert without.args.to_dict() == {}
    assert with_pin.headers["X-Plex-Token"] == TOKEN
    # urllib3 logs the URL with its query: its record is masked too, as every log line is.
    assert any("/switch?pin=***" in record.getMessage() for record in caplog.records
               if record.name == "urllib3.connectionpool")
    assert not any(HOME_PIN in record.getMessage() for record in caplog.records
                   if record.name.split(".")[0] in ("plexauth", "urllib3"))  # werkzeug's are plex.tv's own


PIN_ESCAPED_5_TIMES = functools.reduce(lambda text, _: urllib.parse.quote(text, safe=""), range(4),
                                       "".join(f"%{ord(digit):02X}" for digit in HOME_PIN))


@pytest.mark.parametrize("made", [
    HOME_PIN, base64.b64encode(HOME_PIN.encode()).decode().rstrip("="),
    "".join(f"%{ord(digit):02X}" for digit in HOME_PIN), TOKEN.upper(), TOKEN.swapcase(),
    # Little but the PIN to a reader: spaced out, padded with what shows nothing, split by markup...
    " ".join(HOME_PIN), HOME_PIN + " " * 6, HOME_PIN + "\u200b" * 6, "83<!---->62", fullwidth(HOME_PIN),
    HOME_PIN.translate(ARABIC_INDIC),
    # ... or encoded twice over (UTF-16 in base64, base64 in base64), as the token used may be.
    base64.b64encode(HOME_PIN.encode("utf-16-le")).decode(),
    base64.b64encode(base64.b64encode(HOME_PIN.encode())).decode(),
    " ".join(base64.b64encode(HOME_PIN.encode("utf-16-le")).decode()),
    "".join(f"&#x{0x660 + int(digit):x};" for digit in HOME_PIN), "8&#8203;3&#8203;6&#8203;2",
    "v1." + base64.b64encode(TOKEN.encode("utf-16-le")).decode(),
    # Twice over, as a number, or in padded pieces of base64 (which a decoder reads on through).
    base64.b64encode(base64.b64encode(HOME_PIN.encode("utf-16-le"))).decode(), "8.362e3",
    base64.b64encode(TOKEN[:7].encode()).decode() + base64.b64encode(TOKEN[7:].encode()).decode(),
    # Escaped more times over than masking undoes, as it is or in base64.
    PIN_ESCAPED_5_TIMES, base64.b64encode(PIN_ESCAPED_5_TIMES.encode()).decode(),
    fullwidth(TOKEN), base64.b64encode(TOKEN.encode("utf-16-le")).decode(),
])
def test_home_users__a_token_that_is_the_pin_or_the_token_used_in_another_case_is_refused(
        httpserver: HTTPServer, config: Config, made: str) -> None:
    """The command line prints the token a switch gives: one that is the Home
    PIN (in a form masking finds), or the token used in other letters, would
    print them.  (A PIN inside a longer token is not looked for: a random
    token holds four given digits about once in a million.)"""
    httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch", method="POST").respond_with_json(
        {**ACCOUNT, "authToken": made}, status=201)
    with raises(ResponseError) as info:
        plexauth.switch_home_user(config, plexauth.HomeUser(id=2, uuid="kid-uuid-0001"), pin=HOME_PIN)
    assert info.value.reason.startswith("a token in it holds a secret the request sent")
    sweep(info.value, (TOKEN, HOME_PIN, made))


def test_home_users__urllib3_records_of_other_code_are_left_alone(httpserver: HTTPServer,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    # The mask applies inside plexauth's calls only: a program's own urllib3 requests log as they always did.
    httpserver.expect_request("/elsewhere").respond_with_data("ok")
    urllib3.PoolManager().request("GET", httpserver.url_for(f"/elsewhere?pin={HOME_PIN}"))
    assert any(f"/elsewhere?pin={HOME_PIN}" in record.getMessage() for record in caplog.records
               if record.name == "urllib3.connectionpool")


def test_home_users__a_missing_or_wrong_pin_is_home_pin_required(httpserver: HTTPServer, config: Config) -> None:
    # plex.tv echoes the PIN it was sent: it is masked like every other secret.
    body = {"errors": [{"code": 1041, "message": f"Invalid PIN {HOME_PIN}", "status": 403}]}
    httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch").respond_with_json(body, status=403)
    kid = plexauth.HomeUser(id=2, uuid="kid-uuid-0001")
    with raises(plexauth.HomePinRequiredError) as info:
        plexauth.switch_home_user(config, kid, pin=HOME_PIN)
    assert isinstance(info.value, UnauthorizedError)
    assert (info.value.status, info.value.code) == (403, 1041)
    for text in (str(info.value), repr(info.value), repr(info.value.__dict__)):
        assert HOME_PIN not in text
    assert len(httpserver.log) == 1  # a POST: never sent twice
    # A PIN of digits echoed as a JSON number loses its leading zeros; still masked.
    for pin, echoed in (("0482", 482), ("0048", 48.0), ("0000", 0), ("0482", {"tried": [482]}), ("0482", "482")):
        httpserver.clear()
        echo = {"errors": [{"code": 1041, "message": "Invalid PIN", "status": 403, "pin": echoed}]}
        httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch").respond_with_json(echo, status=403)
        with raises(plexauth.HomePinRequiredError) as info:
            plexauth.switch_home_user(config, kid, pin=pin)
        assert info.value.errors[0].get("pin", "***") == "***"
        assert not re.search(rb"(?<![0-9])0*%d(?![0-9])" % int(pin), info.value.body)
    for spelled in ("4.82e2", "48.2E+1", "482.0"):  # in the message, in any spelling of the number
        httpserver.clear()
        echo = {"errors": [{"code": 1041, "message": f"Invalid PIN {spelled}", "status": 403}]}
        httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch").respond_with_json(echo, status=403)
        with raises(plexauth.HomePinRequiredError) as info:
            plexauth.switch_home_user(config, kid, pin="0482")
        assert (info.value.message, info.value.body) == ("***", b"")
    for pin in ("12345", "12a4", "\u0661234"):
        with pytest.raises(ValueError, match=r"^pin must be the Home PIN: 4 digits as text$"):
            plexauth.switch_home_user(config, kid, pin=pin)
    with pytest.raises(TypeError, match=r"^pin must be the Home PIN as a str, not int$"):
        plexauth.switch_home_user(config, kid, pin=1234)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"user must be a plexauth\.HomeUser"):
        plexauth.switch_home_user(config, "kid-uuid-0001")  # type: ignore[arg-type]
    odd = plexauth.HomeUser(id=3, uuid="a/b?c")
    httpserver.expect_request(re.compile(r"/api/v2/home/users/.*")).respond_with_json(ACCOUNT, status=201)
    assert plexauth.switch_home_user(config, odd) == AUTH_TOKEN
    sent = requests_seen(httpserver)[-1].environ["REQUEST_URI"]
    assert sent == "/api/v2/home/users/a%2Fb%3Fc/switch"  # the uuid is one path segment, and no query


@pytest.mark.parametrize("echo", ["1041", "number"])
def test_home_users__a_pin_that_spells_the_code_or_is_echoed_as_a_number_is_still_home_pin_required(
        httpserver: HTTPServer, config: Config, echo: str) -> None:
    # Masking rewrites the body before it is shown: the kind of error is read before that.
    pin = "1041" if echo == "1041" else HOME_PIN
    body = '{"errors": [{"code": 1041, "message": "Invalid PIN", "status": 403}], "pin": ' + pin + "}"
    httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch").respond_with_data(
        body, status=403, content_type="application/json")
    with raises(plexauth.HomePinRequiredError) as info:
        plexauth.switch_home_user(config, plexauth.HomeUser(id=2, uuid="kid-uuid-0001"), pin=pin)
    assert info.value.code == (None if pin == "1041" else 1041)  # a code that spells the PIN is not shown
    assert pin not in str(info.value)


def test_home_users__the_pin_echoed_in_every_form_is_masked(httpserver: HTTPServer, config: Config) -> None:
    forms = echo_forms(HOME_PIN)
    kid = plexauth.HomeUser(id=2, uuid="kid-uuid-0001")
    for form, text in forms.items():
        httpserver.clear()
        body = {"errors": [{"code": 1041, "message": f"PIN {text} is wrong"}]}
        httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch").respond_with_json(body, status=403)
        with pytest.raises(plexauth.HomePinRequiredError) as info:
            plexauth.switch_home_user(config, kid, pin=HOME_PIN)
        sweep(info.value, (HOME_PIN,))
        assert str(info.value).startswith("POST /api/v2/home/users/kid-uuid-0001/switch failed with 403"), form


def identity_server(machine: str, delay: float = 0.0, ssl_context: Any = None) -> HTTPServer:
    """A Plex Media Server's /identity on 127.0.0.1, answering as ``machine``
    after ``delay`` seconds (its own pace, as a slow LAN server's), over TLS
    with ``ssl_context``."""
    server = HTTPServer(host="127.0.0.1", port=0, ssl_context=ssl_context)

    def answer(request: Any) -> Any:
        from werkzeug import Response

        time.sleep(delay)  # the server's pace, not the test's synchronisation
        body = {"MediaContainer": {"size": 0, "machineIdentifier": machine, "version": "1.40"}}
        return Response(json.dumps(body), content_type="application/json")

    server.expect_request("/identity").respond_with_handler(answer)
    server.start()
    return server


@pytest.fixture
def identities():
    made: list[HTTPServer] = []

    def make(machine: str, delay: float = 0.0, ssl_context: Any = None) -> HTTPServer:
        made.append(identity_server(machine, delay, ssl_context))
        return made[-1]

    yield make
    for server in made:
        server.clear()
        server.stop()


def server_resource(*connections: Any, **fields: Any) -> plexauth.Resource:
    fields = {"owned": True, **fields}
    return plexauth.Resource(client_identifier="machine-1", name="Living Room", provides=("server",),
                             access_token=ACCESS_TOKEN, connections=tuple(connections), **fields)


def connection(server: HTTPServer, **fields: Any) -> plexauth.Connection:
    return plexauth.Connection(uri=server.url_for("").rstrip("/"), protocol="http", **fields)


def test_connect__preference_beats_speed_and_only_the_server_gets_its_token(config: Config, identities: Any) -> None:
    slow_local = identities("machine-1", delay=0.6)
    fast_remote = identities("machine-1")
    fast_relay = identities("machine-1")
    impostor = identities("someone-elses-device")  # a stale LAN address, now another device
    resource = server_resource(connection(fast_relay, relay=True), connection(fast_remote, local=False),
                               connection(impostor, local=True), connection(slow_local, local=True))
    chosen = plexauth.connect(config, resource, timeout=10)
    assert chosen.server_url == slow_local.url_for("").rstrip("/")
    assert chosen.token == ACCESS_TOKEN
    assert dataclasses.replace(chosen, server_url=config.server_url, token=config.token) == config
    for server in (slow_local, fast_remote, fast_relay, impostor):  # counted server-side: probes carry no token
        assert all("X-Plex-Token" not in request.headers for request, _ in server.log)
    assert len(slow_local.log) == 1


CONNECT_AND_EXIT = """
import sys, plexauth
fast, *stalled = (int(port) for port in sys.argv[1:])
uris = [f"http://127.0.0.1:{fast}"] + [f"http://127.0.0.1:{port}" for port in stalled]
connections = tuple(plexauth.Connection(uri=uri, local=index == 0) for index, uri in enumerate(uris))
resource = plexauth.Resource(client_identifier="machine-1", provides=("server",), owned=True,
                             connections=connections)
print(plexauth.connect(plexauth.Config("test-client", timeout=30), resource, timeout=30).server_url)
"""


def test_connect__probes_left_running_hold_up_neither_the_caller_nor_its_exit(identities: Any,
                                                                            fault_server: Any) -> None:
    # The preferred one answers at once; the rest stall until the 30 s timeout. A cron job
    # that connects and ends must not wait for them: they carry no token, and are abandoned.
    fast = identities("machine-1")
    stalled = [fault_server(silent) for _ in range(3)]
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", CONNECT_AND_EXIT, str(fast.port),
                             *(str(server.port) for server in stalled)],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout == f"http://127.0.0.1:{fast.port}\n"
    assert time.monotonic() - started < 15  # a generous bound, well under the probes' 30 s


def test_connect__a_redirect_to_the_server_proves_nothing(config: Config, identities: Any,
                                                          httpserver: HTTPServer) -> None:
    # An address that sends the probe on to the real server's /identity is not that server.
    real = identities("machine-1")
    httpserver.expect_request("/identity").respond_with_data(
        "", status=302, headers={"Location": real.url_for("/identity")})
    resource = server_resource(connection(httpserver, local=True))
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, resource)
    assert info.value.attempts == ((httpserver.url_for("").rstrip("/"), "GET /identity failed with 302 Found"),)
    assert real.log == []


def test_connect__hanging_lan_addresses_do_not_keep_a_working_one_untried(config: Config, fault_server: Any,
                                                                         identities: Any) -> None:
    hanging = [fault_server(silent) for _ in range(6)]  # a laptop away from home: its LAN addresses hang
    remote = identities("machine-1")
    resource = server_resource(*(plexauth.Connection(uri=f"http://127.0.0.1:{server.port}", local=True)
                                 for server in hanging), connection(remote, local=False))
    started = time.monotonic()
    assert plexauth.connect(config, resource, timeout=1.0).server_url == remote.url_for("").rstrip("/")
    assert time.monotonic() - started < 1.0 + 1.5  # after every more preferred one has had its chance


def test_connect__another_server_is_never_chosen(config: Config, identities: Any) -> None:
    impostor = identities("someone-elses-device")
    right = identities("machine-1", delay=0.2)
    resource = server_resource(connection(impostor, local=True), connection(right, local=False))
    assert plexauth.connect(config, resource).server_url == right.url_for("").rstrip("/")
    only_impostor = server_resource(connection(impostor, local=True))
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, only_impostor)
    ((uri, reason),) = info.value.attempts
    assert (uri, reason) == (impostor.url_for("").rstrip("/"), "answered as another server ('someone-elses-device')")
    assert isinstance(info.value, TransportError)
    assert str(info.value) == ("GET /identity could not complete: no connection of 'Living Room' proved to be "
                               "that server")
    echo = identities(ACCESS_TOKEN)  # an address that answers with the token it was never sent
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, server_resource(connection(echo, local=True)))
    assert info.value.attempts[0][1] == "answered as another server ('***')"
    longer = identities("x" * 50 + ACCESS_TOKEN)  # no machine identifier is that long: not shown, nor cut
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, server_resource(connection(longer, local=True)))
    assert info.value.attempts[0][1] == f"answered as another server ('{50 + len(ACCESS_TOKEN)} characters')"


def test_connect__skips_others_lan_and_plain_http_when_https_is_required(config: Config, identities: Any) -> None:
    lan = identities("machine-1")
    remote = identities("machine-1", delay=0.2)
    shared = server_resource(connection(lan, local=True), connection(remote, local=False), owned=False)
    assert plexauth.connect(config, shared).server_url == remote.url_for("").rstrip("/")
    assert lan.log == []  # a LAN address of the owner's network is not probed from here
    strict = server_resource(connection(lan, local=True), https_required=True)
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, strict)
    assert info.value.attempts == ()
    assert "has no connection that may be tried from here" in str(info.value)
    assert lan.log == []


def test_connect__ends_within_timeout_when_every_candidate_stalls(config: Config, fault_server: Any) -> None:
    stalls = [fault_server(silent) for _ in range(6)]  # more than run at once
    with socket.create_server(("127.0.0.1", 0)) as probe:
        refused = probe.getsockname()[1]
    uris = [f"http://127.0.0.1:{server.port}" for server in stalls]
    resource = server_resource(plexauth.Connection(uri=f"http://127.0.0.1:{refused}", local=True),
                               plexauth.Connection(uri="not a url", local=True),
                               *(plexauth.Connection(uri=uri, local=False) for uri in uris))
    started = time.monotonic()
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, resource, timeout=1.0)
    assert time.monotonic() - started < 1.0 + 1.5  # a generous bound on the promise
    attempts = dict(info.value.attempts)
    assert list(attempts) == [f"http://127.0.0.1:{refused}", "not a url", *uris]  # each candidate, in order
    assert attempts[f"http://127.0.0.1:{refused}"] == f"http://127.0.0.1:{refused} refused the connection"
    assert attempts["not a url"] == "not a usable URL"
    # Stalled: each ends by its own time limit (what is left of the second) or by the choice's.
    assert all(re.search(r"\(timed out\)$|within", attempts[uri]) for uri in uris), attempts
    assert_no_secret(repr(info.value.__dict__))


def test_connect__https_first_and_only_with_a_trusted_certificate(config: Config, identities: Any,
                                                                 tmp_path: Any) -> None:
    # The identity check proves identity only where TLS verifies the name (plex.direct's
    # certificates): over plain http any address can repeat what the real /identity says.
    context, bundle = tls_certificate(tmp_path)
    secure = identities("machine-1", delay=0.3, ssl_context=context)  # slower than the plain one
    plain = identities("machine-1")
    https_uri = secure.url_for("").rstrip("/")
    assert https_uri.startswith("https://127.0.0.1:")
    resource = server_resource(connection(plain, local=True),
                               plexauth.Connection(uri=https_uri, protocol="https", local=True))
    chosen = plexauth.connect(dataclasses.replace(config, verify=bundle), resource)
    assert (chosen.server_url, chosen.token, chosen.verify) == (https_uri, ACCESS_TOKEN, bundle)
    # Without the CA the certificate is not trusted: that candidate fails by name, the plain one is next.
    assert plexauth.connect(config, resource).server_url == plain.url_for("").rstrip("/")
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, server_resource(resource.connections[1], https_required=True))
    ((uri, reason),) = info.value.attempts
    assert uri == https_uri
    assert reason.startswith(f"the TLS certificate of {https_uri} is not trusted (")
    for server in (secure, plain):  # counted server-side: no probe carried a token
        assert server.log
        assert all("X-Plex-Token" not in request.headers for request, _ in server.log)


@pytest.mark.parametrize(
    ("handler", "reason"),
    [(reset, "the connection to {} broke ("), (garbage, "the connection to {} broke ("),
     (silent, "{} sent nothing for 0.5 s (timed out)"), (short_body, "the connection to {} broke ("),
     (reset_mid_body, "the connection to {} broke (")],
    ids=["reset", "garbage", "stall", "short-body", "reset-mid-body"],
)
def test_connect__faults_are_reasons_of_unreachable(fault_server: Any, handler: Any, reason: str) -> None:
    server = fault_server(handler)
    uri = f"http://127.0.0.1:{server.port}"
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(fault_config(server.port), server_resource(plexauth.Connection(uri=uri, local=True)))
    ((tried, why),) = info.value.attempts
    assert tried == uri
    assert why.startswith(reason.format(uri)), why
    assert (info.value.__cause__, info.value.__context__) == (None, None)
    assert server.connections == 1  # a probe is never retried: the choice has its own time limit


def test_connect__a_uri_holding_a_token_is_never_probed(config: Config, identities: Any,
                                                       fault_server: Any) -> None:
    # plex.tv writes the connections: one holding the server's (or the caller's) token
    # would hand it to an address that has proved nothing, and show it everywhere.
    stale = fault_server(answer(http_answer(200, json.dumps(IDENTITY).encode())))  # it would pass, if asked
    right = identities("machine-1", delay=0.2)
    leaky = [f"http://127.0.0.1:{stale.port}/{ACCESS_TOKEN}", f"http://127.0.0.1:{stale.port}/?t={TOKEN}",
             f"http://u:{ACCESS_TOKEN}@127.0.0.1:{stale.port}",
             f"http://127.0.0.1:{stale.port}/{''.join(f'%{byte:02X}' for byte in ACCESS_TOKEN.encode())}"]
    resource = server_resource(*(plexauth.Connection(uri=uri, local=True) for uri in leaky),
                               connection(right, local=False))
    assert ACCESS_TOKEN not in repr(resource)  # the token is masked in the connections' URIs too
    assert plexauth.connect(config, resource).server_url == right.url_for("").rstrip("/")
    assert stale.connections == 0
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, server_resource(*resource.connections[:4]))
    assert [reason for _, reason in info.value.attempts] == ["not tried: its URI holds a token"] * 4
    assert info.value.attempts[0][0] == f"http://127.0.0.1:{stale.port}/***"
    assert stale.connections == 0


@pytest.fixture
def closed_ports() -> Any:
    """Makes ports on 127.0.0.1 that refuse connections: bound, never
    listening, and held until the test ends, so that no other process takes
    one meanwhile (the suites .ci/run runs side by side open servers too)."""
    held: list[socket.socket] = []

    def make(count: int) -> list[int]:
        for _ in range(count):
            held.append(socket.socket())
            held[-1].bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in held[-count:]]

    yield make
    for sock in held:
        sock.close()


def test_connect__a_list_longer_than_the_probes_has_its_most_preferred_tried(config: Config, identities: Any,
                                                                             closed_ports: Any) -> None:
    # A server has a handful of connections: of a longer (hostile) list the most preferred are
    # tried, all at once and each for the whole timeout, which bounds the threads and the time.
    refused = [plexauth.Connection(uri=f"http://127.0.0.1:{port}", local=True)
               for port in closed_ports(plexauth._MAX_PROBES)]
    slow_local = identities("machine-1", delay=0.8)  # slower than a share of the timeout would allow
    remote = identities("machine-1")
    resource = server_resource(*refused[1:], connection(slow_local, local=True), connection(remote, local=False))
    chosen = plexauth.connect(config, resource, timeout=3.0)
    assert chosen.server_url == slow_local.url_for("").rstrip("/")
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, server_resource(*refused, connection(remote, local=False)), timeout=3.0)
    assert str(info.value) == ("GET /identity could not complete: no connection of 'Living Room' proved to be that "
                               "server (the 16 most preferred of its 17 connections were tried)")
    assert [uri for uri, _ in info.value.attempts] == [c.uri for c in refused]
    assert remote.log == []  # the 17th is not tried
    overlong = plexauth.Connection(uri=remote.url_for("/" + "a" * plexauth._MAX_URI_CHARS), local=True)
    with raises(plexauth.ServerUnreachableError, match="has no connection that may be tried from here"):
        plexauth.connect(config, server_resource(overlong))
    assert remote.log == []


def test_connect__verified_https_beats_plain_http_even_on_the_lan(config: Config, identities: Any,
                                                                  tmp_path: Any) -> None:
    # The usual list after a move: the old LAN address now belongs to another device, which fails
    # TLS but repeats the server's identity over http. Only the https connection proved anything.
    context, bundle = tls_certificate(tmp_path)
    stale_lan = identities("machine-1")
    remote_https = identities("machine-1", delay=0.3, ssl_context=context)
    https_uri = remote_https.url_for("").rstrip("/")
    resource = server_resource(connection(stale_lan, local=True),
                               plexauth.Connection(uri=https_uri, protocol="https", local=False))
    chosen = plexauth.connect(dataclasses.replace(config, verify=bundle), resource)
    assert (chosen.server_url, chosen.token) == (https_uri, ACCESS_TOKEN)
    assert [uri for uri in plexauth._candidates(resource)] == [https_uri, stale_lan.url_for("").rstrip("/")]


def test_connect__the_servers_token_is_masked_wherever_plex_tv_repeats_it(httpserver: HTTPServer,
                                                                          config: Config) -> None:
    leaky = {"clientIdentifier": "machine-1", "name": f"Den {ACCESS_TOKEN}", "provides": "player",
             "accessToken": ACCESS_TOKEN, "connections": [{"uri": f"http://127.0.0.1:1/{ACCESS_TOKEN}"}]}
    httpserver.expect_request("/api/v2/resources").respond_with_json([leaky, {**leaky, "provides": "server"}])
    player, server = plexauth.get_resources(config)
    shown = [repr(player.connections[0]), str(player.connections), repr(server)]
    with pytest.raises(ValueError, match=r"^resource 'Den \*\*\*' is not a server \(it provides player\)$"):
        plexauth.connect(config, player)
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, server)
    shown += [str(info.value), repr(info.value.attempts)]
    for text in shown:
        assert ACCESS_TOKEN not in text
        assert "***" in text


def test_connect__another_servers_token_is_neither_probed_nor_shown(httpserver: HTTPServer, identities: Any,
                                                                    config: Config) -> None:
    # plex.tv lists every resource in one answer: one's token may sit in another's connection or name.
    other = "CANARY-OTHER-SERVER-b4"
    base = identities("0123456789abcdef").url_for("").rstrip("/")
    living_room = {**RESOURCES[0], "httpsRequired": False, "connections": [
        {"uri": f"{base}/{other}", "protocol": "http", "local": True}, {"uri": base, "protocol": "http"}]}
    den = {**RESOURCES[0], "name": f"Den {ACCESS_TOKEN}", "clientIdentifier": "fedcba9876543210",
           "httpsRequired": False, "accessToken": other, "connections": [{"uri": f"http://127.0.0.1:1/{ACCESS_TOKEN}"}]}
    httpserver.expect_request("/api/v2/resources").respond_with_json([living_room, den])
    first, second = plexauth.get_resources(config)
    chosen = plexauth.connect(config, first)
    assert chosen.server_url == base  # not the more preferred URI that holds the Den's token
    with raises(plexauth.ServerUnreachableError) as info:  # (raises checks that no canary shows)
        plexauth.connect(config, second)
    assert info.value.attempts == (("http://127.0.0.1:1/***", "not tried: its URI holds a token"),)
    assert str(info.value).endswith("no connection of 'Den ***' proved to be that server")


def test_connect__ipv4_before_an_ipv6_literal_plex_tv_did_not_flag(config: Config) -> None:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        closed = probe.getsockname()[1]
    resource = server_resource(plexauth.Connection(uri=f"http://[::1]:{closed}", local=True),
                               plexauth.Connection(uri=f"http://127.0.0.1:{closed}", local=True))
    with raises(plexauth.ServerUnreachableError) as info:
        plexauth.connect(config, resource)
    assert [uri for uri, _ in info.value.attempts] == [f"http://127.0.0.1:{closed}", f"http://[::1]:{closed}"]


def test_connect__wrong_arguments(config: Config) -> None:
    player = plexauth.Resource(client_identifier="phone-1", provides=("client", "player"))
    with pytest.raises(ValueError, match=r"is not a server \(it provides client, player\)"):
        plexauth.connect(config, player)
    with pytest.raises(TypeError, match=r"resource must be a plexauth\.Resource"):
        plexauth.connect(config, "machine-1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        plexauth.connect(config, server_resource(), timeout=0)
    # A Resource built by hand with the wrong types: the field named, before any probe.
    for fields, message in (({"connections": ({"uri": "http://127.0.0.1:1"},)}, "resource.connections must be a "
                             "tuple of Connection"), ({"provides": None}, "resource.provides must be a tuple of str"),
                            ({"access_token": 5}, "resource.access_token must be a str, not int"),
                            ({"access_token": "a\nb"}, "resource.access_token must not contain control characters"),
                            ({"connections": (plexauth.Connection(uri=5),)},  # type: ignore[arg-type]
                             r"resource.connections\[0\].uri must be a str, not int"),
                            ({"owned": "False"}, "resource.owned must be a bool or None, not str"),
                            ({"connections": (plexauth.Connection(uri="http://127.0.0.1:1", local="no"),)},
                             r"resource.connections\[0\].local must be a bool or None, not str")):
        with pytest.raises((TypeError, ValueError), match=f"^{message}$"):
            plexauth.connect(config, dataclasses.replace(server_resource(), **fields))
    with pytest.raises(TypeError, match=r"^config must be a plexauth\.Config, not NoneType$"):
        plexauth.connect(None, server_resource())  # type: ignore[arg-type]


def test_connect__answers_that_are_not_an_identity(config: Config, httpserver: HTTPServer) -> None:
    httpserver.expect_request("/identity").respond_with_json({"MediaContainer": {"size": 0}})
    other = HTTPServer(host="127.0.0.1", port=0)
    other.expect_request("/identity").respond_with_data("", status=401)
    other.start()
    try:
        resource = server_resource(connection(httpserver, local=True), connection(other, local=False))
        with raises(plexauth.ServerUnreachableError) as info:
            plexauth.connect(config, resource)
    finally:
        other.clear()
        other.stop()
    assert [reason for _, reason in info.value.attempts] == [
        "'MediaContainer.machineIdentifier' is missing or not a string", "GET /identity failed with 401 Unauthorized"]


def test_cli__servers_and_connect(cli: Any, httpserver: HTTPServer, identities: Any, tmp_path: Any,
                                  token_env: None) -> None:
    local = identities("0123456789abcdef", delay=0.2)
    remote = identities("0123456789abcdef")
    server = {**RESOURCES[0], "httpsRequired": False, "connections": [
        {"uri": local.url_for("").rstrip("/"), "protocol": "http", "local": True},
        {"uri": remote.url_for("").rstrip("/"), "protocol": "http", "local": False}]}
    httpserver.expect_request("/api/v2/resources").respond_with_json([server, RESOURCES[1]])
    code, out, _ = cli("servers")
    assert (code, out) == (0, f"Living Room (owned): 0123456789abcdef\n  connection: {local.url_for('').rstrip('/')} "
                              f"(local)\n  connection: {remote.url_for('').rstrip('/')} (remote)\n")
    assert [s["name"] for s in json.loads(cli("servers", "--json")[1])["servers"]] == ["Living Room"]
    assert cli("connect", "Living Room") == (0, local.url_for("").rstrip("/") + "\n", "")  # preferred, not fastest
    data = json.loads(cli("connect", "0123456789abcdef", "--json", "--show-token", shown=(ACCESS_TOKEN,))[1])
    assert (data["url"], data["accessToken"]) == (local.url_for("").rstrip("/"), ACCESS_TOKEN)
    target = tmp_path / "server-token"
    code, out, err = cli("connect", "Living Room", "--save-token", str(target))
    assert (code, out, err) == (0, local.url_for("").rstrip("/") + "\n", f"plexauth: the server's token saved to "
                                                                      f"{target}\n")
    assert (target.read_text(), target.stat().st_mode & 0o777) == (ACCESS_TOKEN + "\n", 0o600)
    # The README's walkthrough, on: the transient token minted with the server's own token.
    local.expect_request("/security/token").respond_with_json({"MediaContainer": {"token": TRANSIENT}})
    assert cli("transient-token", "--server", out.strip(), "--token-file", str(target), shown=(TRANSIENT,)) == (
        0, TRANSIENT + "\n", "")
    assert requests_seen(local)[-1].headers["X-Plex-Token"] == ACCESS_TOKEN
    assert cli("connect", "Kitchen")[0::2] == (2, "plexauth: error: no server named 'Kitchen' (plexauth servers "
                                                  "lists them)\n")
    # An owned server's token may be the account's own: shown when asked for, as any other.
    httpserver.clear()
    same = {**server, "accessToken": TOKEN}
    httpserver.expect_request("/api/v2/resources").respond_with_json([same])
    assert cli("connect", "Living Room", "--show-token", shown=(TOKEN,))[1] == (
        f"{local.url_for('').rstrip('/')}\naccess token: {TOKEN}\n")
    httpserver.clear()  # plex.tv put the server's token in a connection: masked in the list
    leaky_uri = {**server, "connections": [{"uri": f"http://127.0.0.1:1/?X-Plex-Token={ACCESS_TOKEN}"}]}
    httpserver.expect_request("/api/v2/resources").respond_with_json([leaky_uri])
    assert "connection: http://127.0.0.1:1/?X-Plex-Token=*** (remote)" in cli("servers")[1]
    assert ACCESS_TOKEN not in cli("servers", "--json")[1]
    httpserver.clear()  # a connection plex.tv lists with the server's token in it: never shown
    leaky = {**server, "connections": [{"uri": f"http://127.0.0.1:1/{ACCESS_TOKEN}", "local": True}]}
    httpserver.expect_request("/api/v2/resources").respond_with_json([leaky])
    code, _, err = cli("connect", "Living Room")
    assert code == 6
    assert ACCESS_TOKEN not in err  # (the cli fixture checks it too)
    httpserver.clear()
    httpserver.expect_request("/api/v2/resources").respond_with_json([server, RESOURCES[1]])
    local.clear()
    remote.clear()  # both now answer 500: no connection qualifies
    code, _, err = cli("connect", "Living Room")
    assert code == 6
    assert err == (f"plexauth: error: GET /identity could not complete: no connection of 'Living Room' proved to be "
                   f"that server ({local.url_for('').rstrip('/')}: GET /identity failed with 500 Internal Server "
                   f"Error; {remote.url_for('').rstrip('/')}: GET /identity failed with 500 Internal Server Error)\n")


def test_cli__output_masks_every_secret_of_the_answer(cli: Any, httpserver: HTTPServer, token_env: None) -> None:
    # What plex.tv sends under any secret key, in any entry, is masked in every
    # other (the cli fixture fails on any canary the command was not asked for).
    other = "CANARY-OTHER-SERVER-b4"
    living_room = {**RESOURCES[0], "name": f"Living Room {other}"}
    den = {**RESOURCES[0], "name": "Den", "clientIdentifier": "fedcba9876543210", "accessToken": other,
           "connections": [{"uri": f"http://192.0.2.7:32400/?X-Plex-Token={ACCESS_TOKEN}"}]}
    httpserver.expect_request("/api/v2/resources").respond_with_json([living_room, den])
    assert cli("servers")[1].splitlines()[0::3] == ["Living Room *** (owned): 0123456789abcdef",
                                                    "Den (owned): fedcba9876543210"]
    assert json.loads(cli("servers", "--json")[1])["servers"][1]["connections"][0]["uri"] == (
        "http://192.0.2.7:32400/?X-Plex-Token=***")
    leaky_source = copy.deepcopy(SOURCE)
    leaky_source["MediaContainer"]["Device"]["Connection"][0]["uri"] += f"/{ACCESS_TOKEN}"
    httpserver.expect_request("/security/resources").respond_with_json(leaky_source)
    assert "connection: https://192-0-2-10.abc.plex.direct:32400/*** (local)" in cli("source-info", "server://x")[1]
    httpserver.expect_request("/api/v2/user").respond_with_json({**ACCOUNT, "username": f"u {SERVICE_TOKEN}"})
    assert cli("whoami")[1].startswith("username: u ***\n")
    assert json.loads(cli("status", "--json")[1])["username"] == "u ***"

def test_cli__home_users_and_switch(cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch,
                                    tmp_path: Any, token_env: None) -> None:
    httpserver.expect_request("/api/v2/home/users").respond_with_json(HOME_USERS)
    httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch", method="POST").respond_with_json(
        {**ACCOUNT, "authToken": PIN_TOKEN}, status=201)
    assert cli("home-users")[1] == "Owner (owner): owner-uuid-0001 admin PIN\nKid (-): kid-uuid-0001 PIN\n"
    assert cli("switch", "Kid") == (2, "", "plexauth: error: 'Kid' is protected: set PLEX_HOME_PIN or use "
                                           "--pin-file\n")
    (tmp_path / "pin").write_text(HOME_PIN + "\n")
    assert cli("switch", "Kid", "--pin-file", str(tmp_path / "pin"), shown=(PIN_TOKEN,)) == (0, PIN_TOKEN + "\n", "")
    monkeypatch.setenv("PLEX_HOME_PIN", HOME_PIN)
    target = tmp_path / "kid-token"
    code, out, _ = cli("switch", "kid-uuid-0001", "--save-token", str(target))
    assert (code, out, target.read_text()) == (0, "", PIN_TOKEN + "\n")
    monkeypatch.delenv("PLEX_HOME_PIN")
    monkeypatch.setattr(sys, "stdin", FakeTTY(""))
    monkeypatch.setattr("getpass.getpass", lambda prompt, stream=None: HOME_PIN)
    assert cli("switch", "Kid", shown=(PIN_TOKEN,))[0] == 0
    pins = [r.args.get("pin") for r in requests_seen(httpserver) if r.path.endswith("/switch")]
    assert pins == [HOME_PIN] * 3
    monkeypatch.setenv("PLEX_HOME_PIN", "12a4")
    assert cli("switch", "Kid") == (2, "", "plexauth: error: pin must be the Home PIN: 4 digits as text\n")
    assert cli("switch", "Nobody")[2] == "plexauth: error: no Home user named 'Nobody' (plexauth home-users lists " \
        "them)\n"
    httpserver.clear()  # a token that holds the PIN's digits is printed whole: it was asked for
    httpserver.expect_request("/api/v2/home/users").respond_with_json(HOME_USERS)
    httpserver.expect_request("/api/v2/home/users/kid-uuid-0001/switch").respond_with_json(
        {**ACCOUNT, "authToken": f"KID-{HOME_PIN}-TOKEN"}, status=201)
    monkeypatch.setenv("PLEX_HOME_PIN", HOME_PIN)
    assert cli("switch", "Kid", "--json")[1] == json.dumps({"uuid": "kid-uuid-0001", "title": "Kid",
                                                            "authToken": f"KID-{HOME_PIN}-TOKEN"}, indent=2) + "\n"
    httpserver.clear()
    twins = {"users": [{"id": 1, "uuid": "a", "title": "Sam"}, {"id": 2, "uuid": "b", "title": "Sam"}]}
    httpserver.expect_request("/api/v2/home/users").respond_with_json(twins)
    assert cli("switch", "Sam")[2] == "plexauth: error: several Home users named 'Sam' (plexauth home-users lists " \
        "them; use the identifier)\n"


# ===========================================================================
# Tests: command line, sign in once (login, status, token, logout)
# ===========================================================================


def run_plexauth(argv: list[str], env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m plexauth`` as a script runs it, in a process of its own."""
    full = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.path.dirname(plexauth.__file__), **env}
    result = subprocess.run([sys.executable, "-m", "plexauth", *argv], input=stdin, env=full, capture_output=True,
                            text=True, timeout=60, check=False)
    assert_no_secret(result.stderr)
    return result


def test_login__pin_then_every_command_without_a_token_variable(httpserver: HTTPServer, tmp_path: Any) -> None:
    plex_tv = FakePlexTV(httpserver, pending=0)
    env = {"HOME": str(tmp_path), "PLEX_TV_URL": httpserver.url_for("/api/v2")}  # a fresh HOME, no token
    login = run_plexauth(["login"], env)
    assert (login.returncode, login.stdout) == (0, "")
    kept = tmp_path / ".config" / "plexauth" / "login.json"
    assert login.stderr.startswith("plexauth: go to https://plex.tv/link and enter the code A1B2")
    assert login.stderr.endswith(f"plexauth: logged in: the token is kept in {kept}; "
                                 "plexauth status shows the account\n")
    assert kept.stat().st_mode & 0o777 == 0o600
    assert kept.parent.stat().st_mode & 0o777 == 0o700
    client_id = json.loads(kept.read_text())["client_identifier"]
    assert json.loads(kept.read_text()) == {"token": PIN_TOKEN, "client_identifier": client_id, "how": "pin"}
    assert sorted(p.name for p in kept.parent.iterdir()) == ["client-id", "login.json", "login.lock"]  # no temporary
    assert (kept.parent / "login.lock").stat().st_mode & 0o777 == 0o600
    whoami = run_plexauth(["whoami"], env)
    assert (whoami.returncode, whoami.stdout.splitlines()[0]) == (0, "username: Username")
    status = run_plexauth(["status"], env)
    assert status.returncode == 0
    assert status.stdout.startswith(f"token from: the kept login ({kept})\nclient identifier: {client_id}\n"
                                    "username: Username\n")
    assert run_plexauth(["ping"], env).returncode == 0
    assert (run_plexauth(["token"], env).stdout, whoami.stdout + status.stdout).count(PIN_TOKEN) == 0
    assert run_plexauth(["token"], env).stdout == PIN_TOKEN + "\n"  # only `token` prints it
    # Every request sent the kept token with the client identifier it was made for.
    assert set(plex_tv.used) == {(PIN_TOKEN, client_id)}
    logout = run_plexauth(["logout"], env)
    assert (logout.returncode, logout.stdout) == (0, "")
    assert logout.stderr == f"plexauth: logged out: the token no longer works; {kept} is removed\n"
    assert PIN_TOKEN not in plex_tv.tokens
    assert not kept.exists()
    after = run_plexauth(["status"], env)
    assert (after.returncode, after.stdout) == (2, "")
    assert after.stderr.startswith("plexauth: error: no token: run plexauth login")


def test_login__token_lookup_order(cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Any) -> None:
    plex_tv = FakePlexTV(httpserver, pending=0)
    plex_tv.tokens |= {TOKEN, AUTH_TOKEN, ACCESS_TOKEN}
    assert cli("login", "--client-id", "kept-device")[0] == 0  # keeps PIN_TOKEN, made for kept-device
    (tmp_path / "option").write_text(AUTH_TOKEN + "\n")
    (tmp_path / "variable").write_text(ACCESS_TOKEN)
    monkeypatch.setenv("PLEX_TOKEN_FILE", str(tmp_path / "variable"))
    monkeypatch.setenv("PLEX_TOKEN", TOKEN)
    steps = [
        (["--token-file", str(tmp_path / "option")], AUTH_TOKEN, f"--token-file {tmp_path / 'option'}"),
        ([], ACCESS_TOKEN, f"PLEX_TOKEN_FILE ({tmp_path / 'variable'})"),
        ([], TOKEN, "PLEX_TOKEN"),
        ([], PIN_TOKEN, f"the kept login ({tmp_path / 'config' / 'plexauth' / 'login.json'})"),
    ]
    for step, (argv, token, where) in enumerate(steps):
        if step == 2:
            monkeypatch.delenv("PLEX_TOKEN_FILE")
        if step == 3:
            monkeypatch.delenv("PLEX_TOKEN")
        code, out, _ = cli("status", *argv)
        assert (code, out.splitlines()[0]) == (0, f"token from: {where}")
        assert plex_tv.used[-1][0] == token  # what reached plex.tv
    # The kept token goes with its own client identifier; others with this user's.
    assert [client for _, client in plex_tv.used][-1] == "kept-device"
    assert plex_tv.used[-2][1] == (tmp_path / "config" / "plexauth" / "client-id").read_text().strip()


def test_login__with_password_keeps_that_token(cli: Any, httpserver: HTTPServer,
                                               monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    httpserver.expect_ordered_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    code, out, _err = cli("login", "--password", "--login", "me", "--remember-me")
    assert (code, out) == (0, "")
    kept = json.loads((tmp_path / "config" / "plexauth" / "login.json").read_text())
    assert (kept["token"], kept["how"]) == (AUTH_TOKEN, "password")
    (request,) = requests_seen(httpserver)
    assert (request.form["password"], request.form["rememberMe"]) == (PASSWORD, "true")
    assert cli("login", "--login", "me")[2] == "plexauth: error: --login is for a sign-in with a password: " \
        "add --password\n"
    assert cli("login", "--password", "--wait", "5")[2] == "plexauth: error: --wait is for a sign-in with a " \
        "code: leave out --password\n"
    assert len(httpserver.log) == 1


@pytest.mark.parametrize("how", ["world-readable", "symlink-to-dev-zero", "fifo", "not-ours", "token-not-text",
                                 "not-utf-8", pytest.param("other-owner", marks=pytest.mark.skipif(
                                     os.geteuid() != 0, reason="making another user's file needs root"))])
def test_login__kept_login_that_is_not_private_is_refused(cli: Any, httpserver: HTTPServer, tmp_path: Any,
                                                          how: str) -> None:
    kept_file(tmp_path / "config", how, name="login.json")
    kept = tmp_path / "config" / "plexauth" / "login.json"
    if how in ("token-not-text", "not-utf-8"):
        kept.write_bytes(b'{"token": 5}' if how == "token-not-text" else b"\xff\xfe")
    code, out, err = cli("whoami")
    wrong = {"world-readable": "readable or writable by other users (mode 0644)",
             "symlink-to-dev-zero": "a symbolic link", "fifo": "not a regular file",
             "other-owner": "owned by another user (uid 4242)"}
    assert (code, out) == (2, "")
    if how in ("not-ours", "token-not-text"):
        assert err == f"plexauth: error: the kept login {kept} is not one plexauth wrote; run plexauth login again\n"
    elif how == "not-utf-8":
        assert err == f"plexauth: error: cannot read the kept login {kept} (not UTF-8 text)\n"
    else:
        assert err == f"plexauth: error: refusing the kept file {kept}: it is {wrong[how]}; remove it and run " \
            "plexauth login\n"
    assert httpserver.log == []


def test_login__a_login_that_cannot_be_kept_makes_no_token_or_revokes_it(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    plex_tv = FakePlexTV(httpserver, pending=0)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "file"))  # no folder can be made there
    code, _, err = cli("login", "--client-id", CLIENT_ID)
    assert (code, err) == (2, f"plexauth: error: cannot keep the login in {tmp_path / 'file' / 'plexauth'} "
                              "(Not a directory); see plexauth --help\n")
    assert httpserver.log == []  # refused before any PIN was made
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    with file_writes_fail():
        code, _, err = cli("login", "--client-id", CLIENT_ID)
    assert code == 1
    assert err.endswith(f"plexauth: error: cannot keep the new token in {tmp_path / 'config' / 'plexauth'}"
                        "/login.json (File too large); it was revoked, so that no working token is left "
                        "behind; sign in again\n")
    assert PIN_TOKEN not in plex_tv.tokens


def test_logout__a_dead_token_is_forgotten_a_network_failure_keeps_it(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    plex_tv = FakePlexTV(httpserver, pending=0)
    assert cli("login")[0] == 0
    kept = tmp_path / "config" / "plexauth" / "login.json"
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    code, _, err = cli("logout", "--plex-tv-url", f"http://127.0.0.1:{port}/api/v2")
    assert (code, kept.exists()) == (6, True)  # not revoked, so not forgotten
    plex_tv.tokens.discard(PIN_TOKEN)  # revoked elsewhere
    code, out, err = cli("status")
    assert (code, out) == (3, "")
    assert err.endswith(f"(code 1001): the token from the kept login ({kept}) is not accepted; run plexauth login\n")
    code, _, err = cli("logout")
    assert (code, err) == (0, f"plexauth: logged out: the token was not accepted already; {kept} is removed\n")
    assert not kept.exists()
    monkeypatch.setenv("PLEX_TOKEN", TOKEN)  # a token that is not kept is revoked, and nothing is removed
    assert cli("logout") == (0, "", "plexauth: logged out: the token no longer works\n")
    assert TOKEN not in plex_tv.tokens


@pytest.mark.parametrize("token", ["tok\nX-Evil: 1", "tok\x1b[2J", 123, "   "], ids=["newline", "escape", "number",
                                                                              "blank"])
def test_login__a_pin_token_that_cannot_be_sent_is_an_unusable_answer_at_once(
    cli: Any, httpserver: HTTPServer, token: Any
) -> None:
    # Not "pending until --wait passes": the answer is unusable (7), at the first check.
    httpserver.expect_request("/api/v2/pins", method="POST").respond_with_json(
        {"id": 7, "code": "A1B2", "clientIdentifier": None}, status=201)
    httpserver.expect_request("/api/v2/pins/7").respond_with_json({"id": 7, "code": "A1B2", "authToken": token})
    code, out, err = cli("login", "--wait", "30")
    assert (code, out) == (7, "")
    assert "'authToken' is not a token that can be sent" in err
    assert len(httpserver.log) == 2


def test_login__one_at_a_time(cli: Any, httpserver: HTTPServer, tmp_path: Any) -> None:
    import fcntl

    folder = tmp_path / "config" / "plexauth"
    folder.mkdir(parents=True, mode=0o700)
    with open(folder / "login.lock", "w") as held:  # another login, waiting for its PIN
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli("login") == (2, "", "plexauth: error: another plexauth login is running for this user; let it "
                                       "finish first\n")
    assert httpserver.log == []  # no PIN, so no token made that one of the two would lose
    (folder / "login.lock").unlink()
    (folder / "login.lock").symlink_to(tmp_path / "elsewhere")
    assert cli("login") == (2, "", f"plexauth: error: cannot lock {folder / 'login.lock'} (Too many levels of "
                                   "symbolic links); remove it\n")
    assert not (tmp_path / "elsewhere").exists()


def test_login__again_revokes_the_token_it_replaces(cli: Any, httpserver: HTTPServer, tmp_path: Any) -> None:
    plex_tv = FakePlexTV(httpserver, pending=0)
    kept = tmp_path / "config" / "plexauth" / "login.json"
    assert cli("login")[0] == 0
    kept.write_text(json.dumps({"token": TOKEN, "client_identifier": "old-device"}))  # as an older login left it
    assert TOKEN in plex_tv.tokens
    assert cli("login")[0] == 0
    assert json.loads(kept.read_text())["token"] == PIN_TOKEN
    assert TOKEN not in plex_tv.tokens  # revoked, with the client identifier it was made for
    assert (TOKEN, "old-device") in plex_tv.used
    kept.write_text(json.dumps({"token": TOKEN, "client_identifier": None}))  # dead already: nothing to say
    code, _, err = cli("login")
    assert (code, err.count("warning")) == (0, 0)
    kept.write_text("not a login")  # one that cannot be read is replaced, not revoked
    assert cli("login")[0] == 0
    plex_tv.tokens.add(AUTH_TOKEN)
    plex_tv.failing.add(AUTH_TOKEN)
    kept.write_text(json.dumps({"token": AUTH_TOKEN, "client_identifier": None}))
    code, _, err = cli("login", "--retries", "0")
    assert code == 0  # the new login is kept; that the old token may still work is said
    assert "plexauth: warning: the token kept before could not be revoked (DELETE /api/v2/users/signout failed " \
        "with 503 Service Unavailable); remove the device in the Plex app\n" in err


def test_login__a_token_too_long_to_keep_is_revoked(cli: Any, httpserver: HTTPServer, tmp_path: Any) -> None:
    long = "L" * 5000
    httpserver.expect_request("/api/v2/pins", method="POST").respond_with_json({"id": 7, "code": "A1B2"}, status=201)
    httpserver.expect_request("/api/v2/pins/7").respond_with_json({"id": 7, "code": "A1B2", "authToken": long})
    httpserver.expect_request("/api/v2/users/signout", method="DELETE").respond_with_data("", status=204)
    code, _, err = cli("login")
    assert code == 1
    assert "(the token is too long to keep); it was revoked" in err
    assert requests_seen(httpserver)[-1].headers["X-Plex-Token"] == long
    assert not (tmp_path / "config" / "plexauth" / "login.json").exists()


def test_cli__what_a_server_sends_cannot_drive_the_terminal(cli: Any, httpserver: HTTPServer, tmp_path: Any,
                                                            token_env: None) -> None:
    forged = "me\x1b[2J\rtoken from: PLEX_TOKEN\x07\u202e"
    httpserver.expect_request("/api/v2/user").respond_with_json({**ACCOUNT, "username": forged})
    code, out, _ = cli("status")
    assert code == 0
    assert "username: me\\x1b[2J\\x0dtoken from: PLEX_TOKEN\\x07\\u202e\n" in out  # bidi controls too
    assert json.loads(cli("whoami", "--json")[1])["username"] == forged  # JSON escapes it itself
    httpserver.expect_request("/api/v2/pins", method="POST").respond_with_json(
        {"id": 7, "code": "AB\x1b]0;title\x07\nCD"}, status=201)
    httpserver.expect_request("/api/v2/pins/7").respond_with_json({"id": 7, "code": "x", "authToken": AUTH_TOKEN})
    code, _, err = cli("link", "--save-token", str(tmp_path / "token"))
    assert code == 0
    assert "enter the code AB\\x1b]0;title\\x07\\x0aCD (waiting" in err


def test_cli__error_lines_carry_no_terminal_escapes(cli: Any, httpserver: HTTPServer, token_env: None) -> None:
    body = {"errors": [{"code": 1001, "message": "bad\x1b[2J token \u202edesrever", "status": 401}]}
    httpserver.expect_request("/api/v2/user").respond_with_json(body, status=401)
    for verbose in ([], ["-v"]):
        code, _, err = cli("whoami", *verbose)
        assert code == 3
        assert "\x1b" not in err
        assert "\u202e" not in err  # the library makes ESC a space; the command line escapes the bidi control
        assert err.endswith("failed with 401 Unauthorized: bad [2J token \\u202edesrever (code 1001)\n")


def test_cli__kept_client_identifier_or_token_that_no_header_can_carry(
    cli: Any, httpserver: HTTPServer, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    kept_file(tmp_path / "config", "private")
    kept = tmp_path / "config" / "plexauth" / "client-id"
    kept.write_text("abc\r\nX-Plex-Token: x")
    monkeypatch.setenv("PLEX_TOKEN", TOKEN)
    assert cli("ping") == (2, "", f"plexauth: error: the client identifier kept in {kept} must not contain control "
                                  "characters, got 'abc\\r\\nX-Plex-Token: x'; remove it\n")
    kept.write_text("  \n")  # blank: replaced by a new one, kept from then on
    FakePlexTV(httpserver)
    assert cli("ping") == (0, "", "")
    assert kept.read_text().startswith("plexauth-")
    monkeypatch.setenv("PLEX_TOKEN", "tok\x1b[31m")
    assert cli("token") == (2, "", "plexauth: error: the token from PLEX_TOKEN must not contain control "
                                   "characters\n")
    monkeypatch.delenv("PLEX_TOKEN")
    assert cli("token", "--token-file", "") == (2, "", "plexauth: error: cannot read the token file '': No such file "
                                                       "or directory\n")


def test_cli__a_kept_folder_that_is_a_link_is_refused(cli: Any, httpserver: HTTPServer, tmp_path: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "plexauth").symlink_to(tmp_path / "elsewhere")
    code, _, err = cli("login")
    assert (code, err) == (2, f"plexauth: error: refusing the kept folder {tmp_path / 'config' / 'plexauth'}: it is a "
                              "symbolic link; remove it\n")
    assert httpserver.log == []
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/config")  # ignored, as XDG says: ~/.config instead
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    FakePlexTV(httpserver, pending=0)
    assert cli("login")[0] == 0
    assert (tmp_path / "home" / ".config" / "plexauth" / "login.json").exists()


def test_login__a_folder_made_unsafe_during_the_sign_in_gets_no_token(cli: Any, httpserver: HTTPServer,
                                                                       tmp_path: Any) -> None:
    # The folder passes the check before the PIN is made, and is swapped for a link while the user
    # approves it: the token is not written there, and is revoked.
    plex_tv = FakePlexTV(httpserver, pending=0)
    folder = tmp_path / "config" / "plexauth"
    (tmp_path / "elsewhere").mkdir(mode=0o700)

    def swap(request: Any) -> Any:
        if not folder.is_symlink():
            folder.rename(tmp_path / "moved")  # with the client-id kept in it
            folder.symlink_to(tmp_path / "elsewhere")
        return plex_tv.handle(request)

    httpserver.clear()
    httpserver.expect_request(re.compile(r"/api/v2/.*")).respond_with_handler(swap)
    code, _, err = cli("login")
    assert code == 1
    assert err.endswith(f"plexauth: error: cannot keep the new token in {folder / 'login.json'} (refusing the kept "
                        f"folder {folder}: it is a symbolic link; remove it); it was revoked, so that no working "
                        "token is left behind; sign in again\n")
    assert PIN_TOKEN not in plex_tv.tokens
    assert list((tmp_path / "elsewhere").iterdir()) == []


@pytest.mark.parametrize("gone", [False, True], ids=["refused", "already-gone"])
def test_logout__a_kept_login_that_cannot_be_removed_is_said_so(cli: Any, httpserver: HTTPServer,
                                                                monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
                                                                gone: bool) -> None:
    FakePlexTV(httpserver, pending=0)
    assert cli("login")[0] == 0

    def unlink(path: Any) -> None:  # as on a read-only file system, or after another logout removed it
        if gone:
            raise FileNotFoundError(errno.ENOENT, "gone")
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "unlink", unlink)
    kept = tmp_path / "config" / "plexauth" / "login.json"
    expected = (0, "", f"plexauth: logged out: the token no longer works; {kept} is removed\n") if gone else (
        1, "", f"plexauth: error: the token no longer works, but {kept} could not be removed (Operation not "
               "permitted); remove it\n")
    assert cli("logout") == expected


def test_cli__each_command_reads_only_what_it_uses(cli: Any, httpserver: HTTPServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    FakePlexTV(httpserver)
    monkeypatch.setenv("PLEX_TOKEN", TOKEN)
    monkeypatch.setenv("PLEX_SERVER_URL", "not a url")  # whoami and ping never talk to the server
    assert cli("whoami")[0] == 0
    assert cli("ping") == (0, "", "")
    assert cli("transient-token") == (2, "", "plexauth: error: PLEX_SERVER_URL must be an http:// or https:// URL "
                                              "with a host, got 'not a url'\n")
    monkeypatch.setenv("PLEX_TOKEN", TOKEN + "\n")
    assert cli("ping") == (2, "", "plexauth: error: the token from PLEX_TOKEN must not contain control characters\n")
    monkeypatch.setenv("PLEX_TOKEN", TOKEN)
    # Before the command, an option it does not use is named; after it, argparse knows none such.
    for argv, command in ((["--server", "http://x", "ping"], "ping"), (["--timeout", "5", "token"], "token"),
                          (["--json", "login"], "login"), (["--json", "logout"], "logout"),
                          (["--plex-tv-url", "http://x", "transient-token"], "transient-token")):
        assert cli(*argv) == (2, "", f"plexauth: error: plexauth {command} does not use {argv[0]}\n")
    code, _, err = cli("whoami", "--server", "http://x")
    assert (code, err.splitlines()[-1]) == (2, "plexauth: error: unrecognized arguments: --server http://x")
    assert cli("sign-in", "--token-file", "x")[0] == 2  # not an option of sign-in at all
    assert cli("source-info", "0123abcd") == (2, "", "plexauth: error: SOURCE must start with server:// or "
                                                     "provider:// (as in server://<the server's machine identifier>), "
                                                     "got '0123abcd'\n")
    assert cli("whoami", "--retries", "11")[2] == "plexauth: error: --retries must be between 0 and 10, got 11\n"


def test_cli__no_token_writes_no_client_identifier(cli: Any, httpserver: HTTPServer, tmp_path: Any) -> None:
    code, _, err = cli("whoami")
    assert (code, err) == (2, "plexauth: error: no token: run plexauth login, or set PLEX_TOKEN_FILE or "
                              "PLEX_TOKEN, or use --token-file\n")
    assert not (tmp_path / "config").exists()


def test_cli__unwritable_config_folder_warns_once(cli: Any, httpserver: HTTPServer, tmp_path: Any,
                                                  monkeypatch: pytest.MonkeyPatch, token_env: None) -> None:
    FakePlexTV(httpserver)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "file"))
    code, _, err = cli("ping")
    assert code == 0
    assert err == f"plexauth: warning: cannot keep the client identifier in {tmp_path / 'file' / 'plexauth'}" \
        "/client-id (Not a directory); set PLEX_CLIENT_IDENTIFIER\n"


def test_cli__token_file_dash_reads_standard_input(cli: Any, httpserver: HTTPServer,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    plex_tv = FakePlexTV(httpserver)
    monkeypatch.setattr(sys, "stdin", io.StringIO(TOKEN + "\n"))
    assert cli("ping", "--token-file", "-") == (0, "", "")
    assert plex_tv.used[-1][0] == TOKEN
    monkeypatch.setattr(sys, "stdin", io.StringIO(TOKEN))
    assert cli("token", "--token-file", "-", shown=(TOKEN,)) == (0, TOKEN + "\n", "")
    closed = io.StringIO()
    closed.close()
    monkeypatch.setattr(sys, "stdin", closed)
    assert cli("token", "--token-file", "-") == (2, "", "plexauth: error: cannot read the token from standard "
                                                        "input (it is closed)\n")
    monkeypatch.setattr(sys, "stdin", None)  # pythonw, or a service without one
    assert cli("token", "--token-file", "-") == (2, "", "plexauth: error: no token: there is no standard input\n")


@pytest.mark.parametrize("source", ["file", "stdin", "variable"])
def test_cli__password_sources_agree_on_white_space(cli: Any, httpserver: HTTPServer, tmp_path: Any,
                                                    monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    spaced = f"  {PASSWORD} \t"  # white space is part of a password; only the line ending goes
    args = ["sign-in", "--login", "me", "--save-token", str(tmp_path / "t")]
    if source == "file":
        (tmp_path / "pw").write_text(spaced + "\n")
        args += ["--password-file", str(tmp_path / "pw")]
    elif source == "stdin":
        monkeypatch.setattr(sys, "stdin", io.StringIO(spaced + "\n"))
        args += ["--password-stdin"]
    else:
        monkeypatch.setenv("PLEX_PASSWORD", spaced)
    assert cli(*args)[0] == 0
    assert requests_seen(httpserver)[0].form["password"] == spaced


def test_cli__total_timeout_and_retries_bound_a_stalled_server(cli: Any, fault_server: Any, token_env: None) -> None:
    server = fault_server(silent)
    url = f"http://127.0.0.1:{server.port}/api/v2"
    started = time.monotonic()
    code, _, err = cli("ping", "--plex-tv-url", url, "--timeout", "30", "--total-timeout", "1")
    assert time.monotonic() - started < 1 + 2  # a generous bound on the promise
    assert (code, err) == (6, f"plexauth: error: GET /api/v2/ping could not complete: no complete answer from "
                              f"http://127.0.0.1:{server.port} within the 1 s limit for the whole call\n")
    code, _, err = cli("ping", "--plex-tv-url", url, "--timeout", "0.2", "--retries", "0")
    assert (code, err) == (6, f"plexauth: error: GET /api/v2/ping could not complete: http://127.0.0.1:"
                              f"{server.port} sent nothing for 0.2 s (timed out)\n")
    server.close()
    assert server.connections == 2  # one try each: the first ended by the limit, the second by --retries 0


def on_terminal(argv: list[str], env: dict[str, str], script: list[tuple[bytes, bytes]]) -> tuple[int, bytes, bytes]:
    """Run ``python -m plexauth`` with a pseudo-terminal on stdin and stderr:
    for each (prompt, answer) of ``script``, wait for the prompt and type the
    answer; return (exit code, stdout, what the terminal showed)."""
    import pty
    import select

    full = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.path.dirname(plexauth.__file__), **env}
    master, slave = pty.openpty()
    child = subprocess.Popen([sys.executable, "-m", "plexauth", *argv], stdin=slave, stdout=subprocess.PIPE,
                             stderr=slave, env=full, start_new_session=True)
    os.close(slave)
    seen = b""
    done = 0  # what the prompts answered so far end at: each prompt is a new one
    try:
        for prompt, answer in script:
            while prompt not in seen[done:]:
                ready, _, _ = select.select([master], [], [], 30)
                assert ready, f"no {prompt!r} on the terminal; it shows {seen!r}"
                seen += os.read(master, 4096)
            done = seen.index(prompt, done) + len(prompt)
            os.write(master, answer)  # typed once the prompt shows: getpass drops what was typed ahead
        out, _ = child.communicate(timeout=30)
        with contextlib.suppress(OSError):  # the rest of what it showed; EIO once the child is gone
            while select.select([master], [], [], 0.5)[0]:
                more = os.read(master, 4096)
                if not more:
                    break
                seen += more
    finally:
        child.kill()
        child.wait()
        os.close(master)
    return child.returncode, out, seen


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ([(b"Login (email or username): ", b"\x04")], b"no login given (end of input)"),
        ([(b"Login (email or username): ", b"me\n"), (b"Password: ", b"\x04")], b"no password given (end of input)"),
        ([(b"Login (email or username): ", b"me\n"), (b"Password: ", b"\n")], b"no password given (an empty line)"),
        ([(b"Login (email or username): ", b"me\n"), (b"Password: ", PASSWORD.encode() + b"\n"),
          (b"Verification code: ", b"\n")], b"no verification code given (an empty line)"),
    ],
    ids=["eof-at-login", "eof-at-password", "empty-password", "empty-code"],
)
def test_cli__prompts_end_in_one_line_usage_errors(httpserver: HTTPServer, tmp_path: Any,
                                                   script: list[tuple[bytes, bytes]], message: bytes) -> None:
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(TWO_FACTOR, status=401)
    env = {"HOME": str(tmp_path), "PLEX_TV_URL": httpserver.url_for("/api/v2"), "PLEX_CLIENT_IDENTIFIER": CLIENT_ID}
    code, out, seen = on_terminal(["sign-in"], env, script)
    assert (code, out) == (2, b"")
    assert seen.rstrip().endswith(b"plexauth: error: " + message)
    assert b"Traceback" not in seen
    assert_no_secret(seen.decode("utf-8", "replace"))


def test_cli__a_wrong_code_on_a_terminal_gets_another_try(httpserver: HTTPServer, tmp_path: Any) -> None:
    for answer in (TWO_FACTOR, TWO_FACTOR, TWO_FACTOR):  # none, a wrong code, another wrong code...
        httpserver.expect_ordered_request("/api/v2/users/signin").respond_with_json(answer, status=401)
    httpserver.expect_ordered_request("/api/v2/users/signin").respond_with_json(ACCOUNT, status=201)
    env = {"HOME": str(tmp_path), "PLEX_TV_URL": httpserver.url_for("/api/v2"), "PLEX_CLIENT_IDENTIFIER": CLIENT_ID,
           "PLEX_PASSWORD": PASSWORD}
    code, out, seen = on_terminal(["sign-in", "--login", "me"], env, [
        (b"Verification code: ", b"111111\n"), (b"Verification code: ", b"222222\n"),
        (b"Verification code: ", CODE.encode() + b"\n")])
    assert (code, out) == (0, AUTH_TOKEN.encode() + b"\n")
    assert seen.count(b"that code was not accepted") == 2
    codes = [request.form.get("verificationCode") for request in requests_seen(httpserver)]
    assert codes == [None, "111111", "222222", CODE]
    assert_no_secret(seen.decode("utf-8", "replace"))


@pytest.mark.parametrize(("typed", "message"), [("", "no login given (end of input)"),
                                               ("  \n", "no login given (an empty line)")], ids=["eof", "empty"])
def test_cli__an_empty_or_ended_login_prompt_is_a_usage_error(cli: Any, httpserver: HTTPServer,
                                                              monkeypatch: pytest.MonkeyPatch, typed: str,
                                                              message: str) -> None:
    # In this process (the terminal tests above run in their own), for what coverage counts.
    monkeypatch.setattr(sys, "stdin", FakeTTY(typed))
    code, out, err = cli("sign-in")
    assert (code, out) == (2, "")
    assert err.endswith(f"plexauth: error: {message}\n")
    assert err.count("error") == 1
    assert httpserver.log == []


def test_cli__codes_typed_on_a_terminal_are_tried_three_times(cli: Any, httpserver: HTTPServer,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(TWO_FACTOR, status=401)
    monkeypatch.setenv("PLEX_PASSWORD", PASSWORD)
    monkeypatch.setattr(sys, "stdin", FakeTTY(""))
    typed = iter(["111111", "222222", "333333"])
    monkeypatch.setattr("getpass.getpass", lambda prompt, stream=None: next(typed))
    code, out, err = cli("sign-in", "--login", "me")
    assert (code, out) == (4, "")
    assert err.count("plexauth: that code was not accepted; try again") == 2
    assert err.endswith("(code 1029): 3 codes were not accepted; sign in again\n")
    codes = [request.form.get("verificationCode") for request in requests_seen(httpserver)]
    assert codes == [None, "111111", "222222", "333333"]


def test_cli__three_wrong_codes_end_the_sign_in(httpserver: HTTPServer, tmp_path: Any) -> None:
    httpserver.expect_request("/api/v2/users/signin").respond_with_json(TWO_FACTOR, status=401)
    env = {"HOME": str(tmp_path), "PLEX_TV_URL": httpserver.url_for("/api/v2"), "PLEX_CLIENT_IDENTIFIER": CLIENT_ID,
           "PLEX_PASSWORD": PASSWORD}
    script = [(b"Verification code: ", b"111111\n")] * 3
    code, out, seen = on_terminal(["sign-in", "--login", "me"], env, script)
    assert (code, out) == (4, b"")
    assert seen.rstrip().endswith(b"(code 1029): 3 codes were not accepted; sign in again")
    assert len(httpserver.log) == 4


# ===========================================================================
# Tests: JWT sign-in (device keys, 7-day tokens; the extra "jwt")
# ===========================================================================
# A local clients.plex.tv (FakeClientsPlexTV) verifies every device JWT it
# gets with the key registered for that device, signs its JWTs with rotated
# keys (the one in use is not the first it lists) and plays the JWT PIN flow.


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_jwk(private: Any, kid: str) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization

    x = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url(x), "use": "sig", "alg": "EdDSA", "kid": kid}


def jwt_claims(client: str = CLIENT_ID, lifetime: float = 7 * 86400, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": "plex.tv", "aud": ["plex.tv", client], "iat": now, "exp": int(now + lifetime),
              "thumbprint": RFC_KID, "scope": plexauth.JWT_SCOPE,
              "user": {"id": 13692262, "uuid": "dae343c1f45beb4f", "username": "Username"}}
    return {**claims, **changes}


def plex_jwt(claims: dict[str, Any], private: Any = None, kid: str = "plex-op-key", alg: str = "EdDSA") -> str:
    """A JWT as plex.tv makes one, signed by ``private`` (or with a signature of zeros)."""
    signed = ".".join(b64url(json.dumps(part).encode()) for part in ({"alg": alg, "kid": kid, "typ": "JWT"}, claims))
    return f"{signed}.{b64url(private.sign(signed.encode()) if private is not None else bytes(64))}"


@functools.lru_cache(maxsize=None)
def plex_signing_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return ed25519.Ed25519PrivateKey.generate()


def plex_signing_jwk() -> dict[str, str]:
    return public_jwk(plex_signing_key(), "plex-op-key")


def op_jwt() -> str:
    return plex_jwt(jwt_claims(), plex_signing_key())


class FakeClientsPlexTV:
    """Plays clients.plex.tv under /clients/api/v2 of the test server.

    Every device JWT is verified with the key registered for its device
    (header alg/kid/typ, signature, ``iss``, ``aud``, a 300 s life, a nonce
    used once, never the same JWT twice); what fails goes to ``problems``
    and is answered 422.  Its JWTs are signed by the second of three keys
    that ``/auth/keys`` lists, and last ``lifetime`` seconds; each is added
    to ``plex_tv.tokens``.  ``counts`` counts the requests by path.
    """

    def __init__(self, server: HTTPServer, plex_tv: FakePlexTV | None = None, *, pending: int = 0,
                 lifetime: float = 7 * 86400) -> None:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        self.plex_tv, self.pending, self.lifetime = plex_tv, pending, lifetime
        self.signing = [(f"plex-key-{n}", ed25519.Ed25519PrivateKey.generate()) for n in range(3)]
        self.devices: dict[str, dict[str, str]] = {}  # client identifier -> its registered public JWK
        self.pins: dict[int, tuple[str, dict[str, str]]] = {}
        self.nonces: set[str] = set()
        self.seen: set[str] = set()  # every device JWT received
        self.issued: list[str] = []
        self.extra: dict[str, Any] = {}  # claims added to those it issues
        self.problems: list[str] = []
        self.counts: dict[str, int] = {}
        server.expect_request(re.compile(r"/clients/api/v2/.*")).respond_with_handler(self.handle)

    def url(self, server: HTTPServer) -> str:
        return server.url_for("/clients/api/v2")

    def handle(self, request: Any) -> Any:
        from werkzeug import Response

        path = request.path[len("/clients/api/v2"):]
        where = re.sub(r"\d+$", "{id}", path)
        self.counts[where] = self.counts.get(where, 0) + 1
        client = request.headers.get("X-Plex-Client-Identifier")
        if (path, request.method) == ("/auth/keys", "GET"):
            return Response(json.dumps({"keys": [public_jwk(private, kid) for kid, private in self.signing]}),
                            content_type="application/json")
        if (path, request.method) == ("/auth/nonce", "GET"):
            nonce = f"nonce-{self.counts[where] - 1}"
            self.nonces.add(nonce)
            return Response(json.dumps({"nonce": nonce}), content_type="application/json")
        if (path, request.method) == ("/auth/jwk", "POST"):
            if self.plex_tv is None or request.headers.get("X-Plex-Token") not in self.plex_tv.tokens:
                return self.error(401, 1001, "User could not be authenticated")
            self.devices[client] = request.get_json()["jwk"]
            return Response(status=201)
        if (path, request.method) == ("/auth/token", "POST"):
            if client not in self.devices:
                return self.error(401, 1097, "No key registered for this device")
            if not self.verified(request.get_json()["jwt"], client, self.devices[client], nonce=True):
                return self.error(422, 1098, "The device JWT was refused")
            return Response(json.dumps({"auth_token": self.issue(client)}), content_type="application/json")
        if (path, request.method) == ("/pins", "POST"):
            body = request.get_json()
            pin_id = 2000 + len(self.pins)
            self.pins[pin_id] = (client, body["jwk"])
            return self.pin(pin_id, None, 201)
        match = re.fullmatch(r"/pins/(\d+)", path)
        assert match, path
        assert request.method == "GET", path
        pin_id = int(match[1])
        made, jwk = self.pins[pin_id]
        if not self.verified(request.args["deviceJWT"], client, jwk, nonce=False) or made != client:
            return self.error(422, 1098, "The device JWT was refused")
        if self.counts[where] <= self.pending:
            return self.pin(pin_id, None, 200)
        self.devices[client] = jwk  # approving the PIN registers the key
        return self.pin(pin_id, self.issue(client), 200)

    def error(self, status: int, code: int, message: str) -> Any:
        from werkzeug import Response

        body = {"errors": [{"code": code, "message": message, "status": status}]}
        return Response(json.dumps(body), status=status, content_type="application/json")

    def pin(self, pin_id: int, token: str | None, status: int) -> Any:
        from werkzeug import Response

        doc = {"id": pin_id, "code": "J1W2", "clientIdentifier": self.pins[pin_id][0], "authToken": token,
               "expiresAt": (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=15)).isoformat()}
        return Response(json.dumps(doc), status=status, content_type="application/json")

    def verified(self, device: str, client: str, jwk: dict[str, str], *, nonce: bool) -> bool:
        from cryptography.hazmat.primitives.asymmetric import ed25519

        problems = []
        head, body, signature = device.split(".")
        header, claims = json.loads(unb64url(head)), json.loads(unb64url(body))
        kid = b64url(hashlib.sha256(json.dumps({"crv": "Ed25519", "kty": "OKP", "x": jwk["x"]},
                                               separators=(",", ":")).encode()).digest())
        if header != {"alg": "EdDSA", "kid": kid, "typ": "JWT"}:
            problems.append(f"header {header}")
        try:
            ed25519.Ed25519PublicKey.from_public_bytes(unb64url(jwk["x"])).verify(unb64url(signature),
                                                                                 f"{head}.{body}".encode())
        except Exception:
            problems.append("signature")
        now = time.time()
        if claims.get("iss") != client or claims.get("aud") != "plex.tv":
            problems.append(f"iss/aud {claims.get('iss')} {claims.get('aud')}")
        if claims["exp"] - claims["iat"] != 300 or not claims["iat"] - 5 <= now < claims["exp"]:
            problems.append("times")
        if claims.get("scope") != plexauth.JWT_SCOPE:
            problems.append("scope")
        if nonce and claims.get("nonce") not in self.nonces:
            problems.append(f"nonce {claims.get('nonce')} unknown or used")
        self.nonces.discard(claims.get("nonce"))  # each nonce once
        if device in self.seen:
            problems.append("the same device JWT twice")
        self.seen.add(device)
        self.problems += problems
        return not problems

    def issue(self, client: str) -> str:
        device_kid = b64url(hashlib.sha256(json.dumps({"crv": "Ed25519", "kty": "OKP", "x": self.devices[client]["x"]},
                                                      separators=(",", ":")).encode()).digest())
        kid, private = self.signing[1]  # rotated: the key in use is not the first listed
        token = plex_jwt(jwt_claims(client, self.lifetime, thumbprint=device_kid, **self.extra), private, kid)
        self.issued.append(token)
        if self.plex_tv is not None:
            self.plex_tv.tokens.add(token)
        return token


@pytest.fixture(autouse=True)
def _no_kept_plex_keys() -> None:
    plexauth._jwt_keys.clear()  # plex.tv's keys, kept between calls: each test starts without


@pytest.fixture
def clients(httpserver: HTTPServer) -> Any:
    """The clients.plex.tv stand-in, with a plex.tv one behind it, and a Config for both."""
    pytest.importorskip("cryptography")
    plex_tv = FakePlexTV(httpserver, pending=0)
    fake = FakeClientsPlexTV(httpserver, plex_tv)
    config = Config(CLIENT_ID, token=TOKEN, plex_tv_url=httpserver.url_for("/api/v2"),
                    clients_url=fake.url(httpserver), retries=0, timeout=5.0)
    return fake, config


def test_jwt__import_never_loads_cryptography() -> None:
    probe = "import sys, plexauth; print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60,
                            cwd=os.path.dirname(os.path.abspath(plexauth.__file__)))
    assert result.stdout == "[]\n"


@pytest.mark.parametrize(
    "call",
    [plexauth.generate_device_key, lambda: plexauth.get_jwt(Config(CLIENT_ID), RFC_KEY),
     lambda: plexauth.verify_jwt(Config(CLIENT_ID), op_jwt() if HAVE_CRYPTOGRAPHY else "a.b.c"),
     lambda: plexauth.check_pin(Config(CLIENT_ID), Pin(id=7, code="ABCD"), key=RFC_KEY),
     lambda: plexauth.wait_for_pin(Config(CLIENT_ID), Pin(id=7, code="ABCD"), key=RFC_KEY)],
    ids=["generate", "get_jwt", "verify_jwt", "check_pin", "wait_for_pin"],
)
def test_jwt__without_cryptography_the_signing_functions_name_the_extra(
    monkeypatch: pytest.MonkeyPatch, call: Any
) -> None:
    if HAVE_CRYPTOGRAPHY:  # as if it were not installed (CI also runs the suite where it is not)
        op_jwt()  # plex.tv's signing key, made (and kept) while cryptography is still there
        for name in [name for name in sys.modules if name.split(".")[0] == "cryptography"]:
            monkeypatch.setitem(sys.modules, name, None)
        monkeypatch.setitem(sys.modules, "cryptography", None)
    with raises(ModuleNotFoundError) as info:
        call()  # before any request: these configs point at nothing that answers
    assert str(info.value) == "JWT sign-in needs the cryptography package: pip install 'plexauth-lite[jwt]'"
    assert info.value.name == "cryptography"


class BrokenModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("OpenSSL 3.0's legacy provider failed to load")


def test_jwt__a_cryptography_that_fails_to_load_is_named_as_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # cryptography raises RuntimeError when OpenSSL fails it: still the documented error, naming the extra.
    for name in [name for name in sys.modules if name.split(".")[0] == "cryptography"]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("cryptography", "cryptography.exceptions"):
        monkeypatch.setitem(sys.modules, name, BrokenModule(name))
    with raises(ModuleNotFoundError) as info:
        plexauth.generate_device_key()
    assert str(info.value) == ("JWT sign-in needs the cryptography package: pip install 'plexauth-lite[jwt]' (the "
                               "one installed failed to load: RuntimeError: OpenSSL 3.0's legacy provider failed to "
                               "load)")
    assert (info.value.name, info.value.__cause__, info.value.__suppress_context__) == ("cryptography", None, True)


def test_device_key__kid_is_the_rfc_7638_thumbprint() -> None:
    assert plexauth._thumbprint(RFC_X) == RFC_KID  # RFC 8037, appendix A.3
    assert RFC_KEY.kid == RFC_KID
    assert "d='***'" in repr(RFC_KEY)
    assert_no_secret(repr(RFC_KEY))
    assert_no_secret(str(RFC_KEY))
    assert RFC_KEY.public_jwk == {"kty": "OKP", "crv": "Ed25519", "x": RFC_X, "use": "sig", "alg": "EdDSA",
                                  "kid": RFC_KID}
    assert {RFC_KEY, dataclasses.replace(RFC_KEY)} == {RFC_KEY}
    wrong = {"kid": ("x" * 43, RFC_KEY.public_jwk, RFC_D), "x": (RFC_KID, {**RFC_KEY.public_jwk, "x": "AA"}, RFC_D),
             "d": (RFC_KID, RFC_KEY.public_jwk, RFC_D[:-2]), "kty": (RFC_KID, {"kty": "RSA"}, RFC_D)}
    for name, args in wrong.items():
        with raises(ValueError) as info:
            plexauth.DeviceKey(*args)
        assert name in str(info.value) or "JWK" in str(info.value)


@needs_cryptography
def test_device_key__generated_keys_sign_as_rfc_8037_says() -> None:
    key = plexauth.generate_device_key()
    assert key.kid == plexauth._thumbprint(key.public_jwk["x"]) == key.public_jwk["kid"]
    assert key != plexauth.generate_device_key()
    # RFC 8037 appendix A.4: the signature of its example, by the example key.
    signed = b"eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    assert b64url(plexauth._private_key(RFC_KEY).sign(signed)) == (
        "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg")
    mismatched = plexauth.DeviceKey(key.kid, key.public_jwk, RFC_D)
    with raises(ValueError, match="key.d is not the private key of key.public_jwk"):
        plexauth.get_jwt(Config(CLIENT_ID), mismatched)


def test_device_key__file_is_private_atomic_and_read_back(tmp_path: Any) -> None:
    path = tmp_path / "device-key.json"
    plexauth.save_device_key(RFC_KEY, path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {**RFC_KEY.public_jwk, "d": RFC_D}
    assert [p.name for p in tmp_path.iterdir()] == ["device-key.json"]  # no temporary file left
    assert plexauth.load_device_key(str(path)) == RFC_KEY
    assert plexauth.load_device_key(path).d == RFC_D
    path.chmod(0o644)  # a new key replaces the file whole, private again
    plexauth.save_device_key(RFC_KEY, str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    with raises(FileNotFoundError):
        plexauth.load_device_key(tmp_path / "none.json")
    with raises(NotADirectoryError):
        plexauth.load_device_key(path / "inside")
    with raises(TypeError, match="key must be a plexauth.DeviceKey"):
        plexauth.save_device_key("key", path)  # type: ignore[arg-type]
    for wrong in (None, 5, b"device-key.json"):
        with raises(TypeError, match=f"^path must be a str or an os.PathLike of str, not {type(wrong).__name__}$"):
            plexauth.load_device_key(wrong)  # type: ignore[arg-type]
        with raises(TypeError, match="^path must be a str"):
            plexauth.save_device_key(RFC_KEY, wrong)  # type: ignore[arg-type]
    path.write_text("")  # there, but empty: not a key, and not "no such file"
    with raises(ValueError, match="is not a private Ed25519 JWK"):
        plexauth.load_device_key(path)


@pytest.mark.parametrize(
    ("how", "message"),
    [("world-readable", "readable or writable by other users (mode 0644)"),
     ("world-writable", "readable or writable by other users (mode 0666)"),
     ("symlink", "a symbolic link"), ("fifo", "not a regular file"), ("other-owner", "owned by another user"),
     ("public-only", "is not a private Ed25519 JWK"), ("not-json", "is not a private Ed25519 JWK"),
     ("wrong-kid", "is not a private Ed25519 JWK"), ("rsa", "is not a private Ed25519 JWK"),
     ("not-text", "is not a private Ed25519 JWK"), ("too-large", "larger than 4096 bytes")],
)
def test_device_key__files_that_are_not_private_keys_are_refused(tmp_path: Any, how: str, message: str) -> None:
    path = tmp_path / "device-key.json"
    plexauth.save_device_key(RFC_KEY, path)
    jwk = json.loads(path.read_text())
    if how == "other-owner" and os.geteuid() != 0:
        pytest.skip("only root can give a file to another user")
    changes: dict[str, Any] = {
        "world-readable": lambda: path.chmod(0o644), "world-writable": lambda: path.chmod(0o666),
        "symlink": lambda: (path.unlink(), (tmp_path / "real").write_text(json.dumps(jwk)), path.symlink_to("real")),
        "fifo": lambda: (path.unlink(), os.mkfifo(path, 0o600)), "other-owner": lambda: os.chown(path, 4242, 4242),
        "public-only": lambda: path.write_text(json.dumps(RFC_KEY.public_jwk)),
        "not-json": lambda: path.write_text("{"), "wrong-kid": lambda: path.write_text(json.dumps({**jwk, "kid": "k"})),
        "rsa": lambda: path.write_text(json.dumps({**jwk, "kty": "RSA"})),
        "not-text": lambda: path.write_bytes(b"\xff\xfe{"), "too-large": lambda: path.write_text(" " * 5000),
    }
    changes[how]()
    with raises(ValueError) as info:
        plexauth.load_device_key(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


@needs_cryptography
def test_get_jwt__sends_the_contracts_device_jwt_with_a_fresh_nonce(httpserver: HTTPServer, clients: Any) -> None:
    fake, config = clients
    key = plexauth.generate_device_key()
    jwt_config = dataclasses.replace(config, client_identifier="jwt-device-1")
    plexauth.register_device_key(jwt_config, key)  # with the legacy token of config
    assert fake.devices["jwt-device-1"] == key.public_jwk
    first = plexauth.get_jwt(jwt_config, key)
    second = plexauth.get_jwt(jwt_config, key)
    assert fake.problems == []  # each device JWT verified with the registered key; nonces used once
    assert fake.counts == {"/auth/jwk": 1, "/auth/nonce": 2, "/auth/token": 2}
    assert (first.token, second.token) == tuple(fake.issued)
    assert first.thumbprint == key.kid
    assert first.user["username"] == "Username"
    assert first.claims["aud"] == ["plex.tv", "jwt-device-1"]
    assert first.raw["header"] == {"alg": "EdDSA", "kid": "plex-key-1", "typ": "JWT"}
    assert first.expires_at - first.issued_at == datetime.timedelta(days=7)
    assert first.expires_at.tzinfo == datetime.timezone.utc
    assert "token='***'" in repr(first)
    seen = [request.get_json()["jwt"] for request in requests_seen(httpserver) if request.path.endswith("/token")]
    head, claims = (json.loads(unb64url(part)) for part in seen[0].split(".")[:2])
    assert head == {"alg": "EdDSA", "kid": key.kid, "typ": "JWT"}
    assert list(claims) == ["nonce", "scope", "aud", "iss", "iat", "exp"]
    assert (claims["nonce"], claims["scope"], claims["aud"], claims["iss"]) == (
        "nonce-0", plexauth.JWT_SCOPE, "plex.tv", "jwt-device-1")
    assert claims["exp"] - claims["iat"] == 300
    assert all("=" not in part for part in seen[0].split("."))  # base64url without padding
    for request in requests_seen(httpserver):
        if request.path.startswith("/clients/api/v2/auth/") and not request.path.endswith("/jwk"):
            assert "X-Plex-Token" not in request.headers  # the device JWT is what signs in
    for text in (repr(first), str(first)):
        for secret in (*seen, first.token):
            assert secret not in text


@needs_cryptography
def test_verify_jwt__finds_the_signing_key_among_rotated_ones(clients: Any) -> None:
    fake, config = clients
    key = plexauth.generate_device_key()
    jwt_config = dataclasses.replace(config, client_identifier="jwt-device-2")
    plexauth.register_device_key(jwt_config, key)
    issued = plexauth.get_jwt(jwt_config, key)
    verified = plexauth.verify_jwt(jwt_config, issued.token, key=key)
    assert verified == issued
    assert fake.counts["/auth/keys"] == 1
    plexauth.verify_jwt(jwt_config, issued.token)  # the keys are kept
    assert fake.counts["/auth/keys"] == 1
    # plex.tv rotates: a token signed by a key not kept fetches them once more.
    from cryptography.hazmat.primitives.asymmetric import ed25519

    fake.signing.insert(0, ("plex-key-new", ed25519.Ed25519PrivateKey.generate()))
    plexauth.verify_jwt(jwt_config, fake.issue("jwt-device-2"))  # still signed by plex-key-1: no fetch
    assert fake.counts["/auth/keys"] == 1
    newer = plex_jwt(jwt_claims("jwt-device-2", thumbprint=key.kid), fake.signing[0][1], "plex-key-new")
    assert plexauth.verify_jwt(jwt_config, newer, key=key).token == newer
    assert fake.counts["/auth/keys"] == 2
    with raises(ResponseError) as info:
        plexauth.verify_jwt(jwt_config, plex_jwt(jwt_claims("jwt-device-2"), fake.signing[0][1], "plex-key-gone"))
    assert info.value.reason == "plex.tv has no key 'plex-key-gone'"
    assert fake.counts["/auth/keys"] == 3  # fetched once for it, not more


@needs_cryptography
@pytest.mark.parametrize(
    ("claims", "sign", "reason"),
    [
        ({}, "other", "its signature does not verify with plex.tv's key 'plex-key-1'"),
        ({"aud": ["plex.tv", "another-device"]}, "plex", "it is not meant for plex.tv and 'jwt-device-3' ('aud')"),
        ({"aud": "jwt-device-3"}, "plex", "it is not meant for plex.tv and 'jwt-device-3' ('aud')"),
        ({"iss": "plex.tv.example"}, "plex", "it was not issued by plex.tv ('iss')"),
        ({"exp": int(time.time()) - 120}, "plex", "it expired at "),
        # A day ahead: the parameters are made when the suite is collected, maybe minutes before the test runs.
        ({"iat": int(time.time()) + 86400}, "plex", "it has no time of issue, or one still to come ('iat')"),
        ({"iat": None}, "plex", "it has no time of issue, or one still to come ('iat')"),
        ({"thumbprint": "another-key"}, "plex", "it was issued to another device key than "),
        ({"exp": "soon"}, "plex", "the JWT has no expiry ('exp')"),
        ({}, "none", "its header does not name an EdDSA key ('alg', 'kid')"),
    ],
    ids=["bad-signature", "wrong-audience", "audience-without-plex-tv", "wrong-issuer", "expired", "issued-later",
         "no-iat", "wrong-thumbprint", "no-expiry", "alg-none"],
)
def test_verify_jwt__refuses(clients: Any, claims: dict[str, Any], sign: str, reason: str) -> None:
    fake, config = clients
    key = plexauth.generate_device_key()
    jwt_config = dataclasses.replace(config, client_identifier="jwt-device-3")
    from cryptography.hazmat.primitives.asymmetric import ed25519

    signer = {"plex": fake.signing[1][1], "other": ed25519.Ed25519PrivateKey.generate(), "none": None}[sign]
    token = plex_jwt(jwt_claims("jwt-device-3", **{"thumbprint": key.kid, **claims}), signer, "plex-key-1",
                     alg="none" if sign == "none" else "EdDSA")
    with raises(ResponseError) as info:
        plexauth.verify_jwt(jwt_config, token, key=key)
    assert info.value.reason.startswith(reason)
    assert str(info.value) == f"GET /clients/api/v2/auth/keys: the plex.tv JWT was refused: {info.value.reason}"
    sweep(info.value, (*CANARIES, token))
    assert plexauth.verify_jwt(jwt_config, plex_jwt(jwt_claims("jwt-device-3", thumbprint=key.kid),
                                                    fake.signing[1][1], "plex-key-1"), key=key)


@needs_cryptography
def test_verify_jwt__refuses_what_plex_tv_signed_in_a_loose_form(clients: Any) -> None:
    # Each is signed by plex.tv's key; each says one thing to plexauth and may say another
    # to the next reader, or spells one token several ways.
    fake, config = clients
    jwt_config = dataclasses.replace(config, client_identifier="jwt-device-3")
    signer, now = fake.signing[1][1], int(time.time())

    def signed(header: str, claims: str) -> str:
        head = f"{b64url(header.encode())}.{b64url(claims.encode())}"
        return f"{head}.{b64url(signer.sign(head.encode()))}"

    header = '{"alg": "EdDSA", "kid": "plex-key-1", "typ": "JWT"}'
    good = plex_jwt(jwt_claims("jwt-device-3"), signer, "plex-key-1")
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    spare_bits = good[:-1] + alphabet[alphabet.index(good[-1]) ^ 1]  # bits past the signature's last byte
    claims = json.dumps(jwt_claims("jwt-device-3"))
    for token, reason in (
            (plex_jwt(jwt_claims("jwt-device-3", exp=str(now + 3600)), signer, "plex-key-1"),
             "its 'exp' is not a whole number of seconds"),
            (plex_jwt(jwt_claims("jwt-device-3", iat=str(now)), signer, "plex-key-1"),
             "its 'iat' is not a whole number of seconds"),
            (plex_jwt(jwt_claims("jwt-device-3", nbf=now + 3600), signer, "plex-key-1"), "it is not valid yet ('nbf')"),
            (signed('{"alg": "none", "alg": "EdDSA", "kid": "plex-key-1"}', claims),
             "the JWT's header gives a key twice"),
            (signed(header, '{"exp": 1, ' + claims[1:]), "the JWT's claims gives a key twice"),
            (spare_bits, "its signature does not verify with plex.tv's key 'plex-key-1'")):
        with raises(ResponseError) as info:
            plexauth.verify_jwt(jwt_config, token)
        assert info.value.reason == reason
    assert plexauth.verify_jwt(jwt_config, good).token == good
    for nbf in (now, None):
        assert plexauth.verify_jwt(jwt_config, plex_jwt(jwt_claims("jwt-device-3", nbf=nbf), signer, "plex-key-1"))


@needs_cryptography
def test_verify_jwt__keys_are_kept_per_url_and_certificate_check_for_an_hour(clients: Any,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    fake, config = clients
    jwt_config = dataclasses.replace(config, client_identifier="jwt-device-3")
    token = plex_jwt(jwt_claims("jwt-device-3"), fake.signing[1][1], "plex-key-1")
    plexauth.verify_jwt(jwt_config, token)
    plexauth.verify_jwt(jwt_config, token)
    assert fake.counts["/auth/keys"] == 1
    # Keys fetched without checking the certificate serve no caller who checks it, and back.
    plexauth.verify_jwt(dataclasses.replace(jwt_config, verify=False), token)
    assert fake.counts["/auth/keys"] == 2
    plexauth.verify_jwt(jwt_config, token)
    assert fake.counts["/auth/keys"] == 2
    monkeypatch.setattr(plexauth, "_JWT_KEYS_SECONDS", -1.0)  # as if an hour had passed: a key rotated out goes
    plexauth.verify_jwt(jwt_config, token)
    assert fake.counts["/auth/keys"] == 3


@needs_cryptography
@pytest.mark.parametrize("token", ["not-a-jwt", "a.b", "e30.e30.AAAA", "W10.e30.AAAA", "e30.bm90IGpzb24.AAAA",
                                   "e30.e30.A*", "e30." + b64url(b"{\xff") + ".AA"])
def test_verify_jwt__a_token_that_is_no_jwt_is_refused(clients: Any, token: str) -> None:
    _, config = clients
    with raises(ResponseError) as info:
        plexauth.verify_jwt(config, token)
    assert info.value.reason.startswith(("the token is not a JWT", "the JWT's header", "the JWT's claims",
                                         "the JWT has no expiry", "its header does not name"))
    with raises(TypeError):
        plexauth.verify_jwt(config, None)  # type: ignore[arg-type]
    with raises(TypeError, match="key must be a plexauth.DeviceKey"):
        plexauth.verify_jwt(config, token, key="k")  # type: ignore[arg-type]


@needs_cryptography
def test_jwt_pin__returns_a_plex_jwt_each_check_with_a_fresh_device_jwt(httpserver: HTTPServer, clients: Any) -> None:
    fake, config = clients
    fake.pending = 2
    key = plexauth.generate_device_key()
    jwt_config = dataclasses.replace(config, client_identifier="jwt-device-4", token=None)
    pin = plexauth.create_pin(jwt_config, key=key, strong=True)
    assert pin.code == "J1W2"
    assert plexauth.check_pin(jwt_config, pin, key=key).auth_token is None
    token = plexauth.wait_for_pin(jwt_config, pin, key=key, interval=1.0, timeout=30)
    assert token == fake.issued[0]
    assert plexauth.verify_jwt(jwt_config, token, key=key).thumbprint == key.kid
    assert fake.problems == []  # every check carried a new device JWT that verified
    assert fake.counts["/pins/{id}"] == 3
    created = next(r for r in requests_seen(httpserver) if r.path == "/clients/api/v2/pins")
    assert created.get_json() == {"jwk": key.public_jwk, "strong": True}
    assert created.headers["Content-Type"] == "application/json"
    checks = [r.args["deviceJWT"] for r in requests_seen(httpserver) if r.path.startswith("/clients/api/v2/pins/")]
    assert len(set(checks)) == 3
    assert all("X-Plex-Token" not in r.headers for r in requests_seen(httpserver) if "/pins" in r.path)


@needs_cryptography
def test_jwt_pin__a_pin_token_that_is_no_jwt_is_revoked(httpserver: HTTPServer) -> None:
    plex_tv = FakePlexTV(httpserver)
    plex_tv.tokens.add(PIN_TOKEN)
    httpserver.expect_request("/clients/api/v2/pins/7").respond_with_json(
        {"id": 7, "code": "J1W2", "authToken": PIN_TOKEN})
    config = Config(CLIENT_ID, plex_tv_url=httpserver.url_for("/api/v2"),
                    clients_url=httpserver.url_for("/clients/api/v2"))
    with raises(ResponseError) as info:
        plexauth.check_pin(config, Pin(id=7, code="J1W2"), key=RFC_KEY)
    assert info.value.reason == ("the token is not a JWT (three base64url parts joined by dots); "
                                 "the new token in it was revoked")
    assert PIN_TOKEN not in plex_tv.tokens


@needs_cryptography
@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [(498, {"errors": [{"code": 1096, "message": "Token expired"}]}, UnauthorizedError, 1096),
     (401, {"errors": [{"code": 1097, "message": "No key registered"}]}, UnauthorizedError, 1097),
     (400, {"errors": [{"code": 1097, "message": "No key registered"}]}, UnauthorizedError, 1097),
     (422, {"errors": [{"code": 1098, "message": "Thumbprint refused"}]}, APIError, 1098),
     (429, {"errors": [{"code": 1003, "message": "Slow down"}]}, RateLimitedError, 1003)],
    ids=["498", "1097", "1097-as-400", "422", "429"],
)
def test_jwt__errors_of_clients_plex_tv(httpserver: HTTPServer, config: Config, status: int, body: Any,
                                        cls: type, code: int) -> None:
    where = "/api/v2/auth/nonce" if status == 429 else "/api/v2/auth/token"
    httpserver.expect_request("/api/v2/auth/nonce").respond_with_json(body if status == 429 else {"nonce": "n-1"},
                                                                      status=status if status == 429 else 200)
    httpserver.expect_request("/api/v2/auth/token").respond_with_json(body, status=status)
    with raises(APIError) as info:
        plexauth.get_jwt(dataclasses.replace(config, retries=0), RFC_KEY)
    assert type(info.value) is cls
    assert (info.value.status, info.value.code, info.value.path) == (status, code, where)


@needs_cryptography
def test_jwt__device_jwts_and_plex_jwts_reach_no_error_and_no_log(fault_server: Any,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """A server that echoes what it got (the device JWT, in the query or the
    body) into its errors and PIN answers: nothing of it shows."""
    sent: list[str] = []
    plex = op_jwt()

    def script(conn: socket.socket, request: Incoming) -> bool:
        text = request.line + request.body.decode()
        found = re.findall(r"[\w-]+\.[\w-]+\.[\w-]+", urllib.parse.unquote(text))
        sent.extend(found)
        if "/nonce" in request.line:
            conn.sendall(http_answer(200, b'{"nonce": "n"}'))
        else:
            # Also in parts: the header is predictable, so claims and signature alone give the JWT away.
            parts = [piece for jwt in (*found, plex)
                     for piece in (*jwt.split(".")[1:], jwt.translate(str.maketrans("-_", "+/")))]
            echo = json.dumps({"errors": [{"code": 1098, "message": f"refused {text} {plex} {' '.join(parts)}"}],
                               "echo": text})
            conn.sendall(http_answer(422, echo.encode()))
        return True

    server = fault_server(keep_alive(script))
    config = hostile_config(server.port, token=plex)
    for call in (lambda: plexauth.get_jwt(config, RFC_KEY),
                 lambda: plexauth.check_pin(config, Pin(id=7, code="ABCD"), key=RFC_KEY),
                 lambda: plexauth.register_device_key(config, RFC_KEY)):
        with raises(APIError) as info:
            call()
        pieces = [piece for jwt in (plex, *sent) for piece in jwt.split(".")[1:]]
        sweep(info.value, (*CANARIES, plex, *sent, *pieces))
    assert len(sent) == 2
    for record in caplog.records:
        assert_no_secret(record.getMessage(), (*CANARIES, plex, *sent))


def test_jwt__wrong_arguments(config: Config) -> None:
    with raises(TypeError, match="key must be a plexauth.DeviceKey"):
        plexauth.register_device_key(config, "key")  # type: ignore[arg-type]
    with raises(ValueError, match="config.token must be the legacy token"):
        plexauth.register_device_key(dataclasses.replace(config, token=None), RFC_KEY)
    with raises(TypeError, match="key must be a plexauth.DeviceKey"):
        plexauth.create_pin(config, key="key")  # type: ignore[arg-type]
    with raises(ValueError, match="Config.clients_url must be an http:// or https:// URL"):
        dataclasses.replace(config, clients_url="ftp://clients")
    assert Config(CLIENT_ID).clients_url == "https://clients.plex.tv/api/v2"


def test_jwt__clients_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLEX_CLIENTS_URL", "https://clients.example/api/v2")
    assert Config.from_env(client_identifier=CLIENT_ID).clients_url == "https://clients.example/api/v2"


@needs_cryptography
def test_jwt__wrong_scope_and_undecodable_answers(httpserver: HTTPServer, config: Config) -> None:
    with raises(TypeError, match="scope must be a str"):
        plexauth.get_jwt(config, RFC_KEY, scope=None)  # type: ignore[arg-type]
    httpserver.expect_request("/api/v2/auth/nonce").respond_with_json({"nonce": "n-1"})
    httpserver.expect_oneshot_request("/api/v2/auth/token").respond_with_json({"auth": "x"})
    httpserver.expect_oneshot_request("/api/v2/auth/token").respond_with_json({"authToken": "x.y.z"})
    expired = plex_jwt(jwt_claims(lifetime=-120), plex_signing_key())
    httpserver.expect_oneshot_request("/api/v2/auth/token").respond_with_json({"authToken": expired})
    httpserver.expect_oneshot_request("/api/v2/auth/token").respond_with_json({"authToken": op_jwt()})
    with raises(ResponseError, match="'auth_token' is missing"):
        plexauth.get_jwt(config, RFC_KEY)
    with raises(ResponseError, match="the JWT's header is not base64url text"):
        plexauth.get_jwt(config, RFC_KEY)
    with raises(ResponseError, match="the JWT expired already, at "):  # never kept in place of a good one
        plexauth.get_jwt(config, RFC_KEY)
    assert plexauth.get_jwt(config, RFC_KEY).thumbprint == RFC_KID
    httpserver.clear()
    httpserver.expect_request("/api/v2/auth/keys").respond_with_json(
        {"keys": [1, {"kty": "RSA", "kid": "r"}, {**plex_signing_jwk(), "x": "AAAA"}, {"kty": "OKP"},
                  {**plex_signing_jwk(), "crv": "X25519"}]})
    with raises(ResponseError, match="plex.tv has no key 'plex-op-key'"):
        plexauth.verify_jwt(config, op_jwt())


@needs_cryptography
def test_cli__login_jwt_then_token_from_cron_renews_only_within_a_day(
    cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    plex_tv = FakePlexTV(httpserver, pending=0)
    fake = FakeClientsPlexTV(httpserver, plex_tv, lifetime=12 * 3600)  # the first JWT: 12 hours left
    monkeypatch.setenv("PLEX_CLIENTS_URL", fake.url(httpserver))
    code, out, err = cli("login", "--jwt")
    assert (code, out) == (0, "")
    folder = tmp_path / "config" / "plexauth"
    login, key_file = folder / "login.json", folder / "device-key.json"
    assert err.startswith("plexauth: go to https://plex.tv/link and enter the code J1W2")
    assert err.endswith(f"plexauth: logged in: the token is kept in {login}; plexauth status shows the account\n")
    kept = json.loads(login.read_text())
    client_id = kept["client_identifier"]
    assert kept == {"token": fake.issued[0], "client_identifier": client_id, "how": "jwt"}
    assert client_id.startswith("plexauth-")  # an identifier of its own, not the one kept for plain logins
    assert not (folder / "client-id").exists()
    key = plexauth.load_device_key(key_file)
    assert (login.stat().st_mode & 0o777, key_file.stat().st_mode & 0o777) == (0o600, 0o600)
    assert fake.devices[client_id] == key.public_jwk
    # From cron: within a day of expiry, renewed with the key (nonce + token), counted by the server.
    code, out, _ = cli("token", shown=(fake.issued[-1],))
    assert (code, fake.counts["/auth/nonce"], fake.counts["/auth/token"]) == (0, 1, 1)
    assert out == fake.issued[1] + "\n"
    assert json.loads(login.read_text())["token"] == fake.issued[1]
    fake.lifetime = 12 * 3600
    assert fake.problems == []
    code, out, _ = cli("token")  # renewed again: its token also had 12 hours
    assert (code, out, fake.counts["/auth/token"]) == (0, fake.issued[2] + "\n", 2)
    fake.lifetime = 7 * 86400
    cli("token")
    renewed = fake.issued[3]
    for _ in range(2):  # a fresh one is left alone
        assert cli("token") == (0, renewed + "\n", "")
    assert fake.counts["/auth/token"] == 3
    code, out, _ = cli("status")
    expires = plexauth._decoded_jwt(renewed).expires_at
    assert code == 0
    assert f"token expires: {expires.isoformat()}" in out
    assert f"client identifier: {client_id}" in out
    code, _, err = cli("logout")
    assert code == 0
    assert err == f"plexauth: logged out: the token no longer works; {login} is removed; {key_file} is removed\n"
    assert not key_file.exists()


@needs_cryptography
def test_cli__token_renewal_failures(cli: Any, httpserver: HTTPServer, monkeypatch: pytest.MonkeyPatch,
                                     tmp_path: Any) -> None:
    plex_tv = FakePlexTV(httpserver, pending=0)
    fake = FakeClientsPlexTV(httpserver, plex_tv, lifetime=3600)
    monkeypatch.setenv("PLEX_CLIENTS_URL", fake.url(httpserver))
    assert cli("login", "--jwt", "--client-id", "my-jwt-device")[0] == 0
    folder = tmp_path / "config" / "plexauth"
    first = fake.issued[0]
    fake.devices.clear()  # the device was removed in the Plex app: 1097
    code, out, err = cli("token")
    assert (code, out) == (0, first + "\n")  # still good for an hour: it is printed, with a warning
    assert err.startswith("plexauth: warning: the token could not be renewed (POST /clients/api/v2/auth/token "
                          "failed with 401 Unauthorized: No key registered for this device (code 1097)); "
                          "it is good until ")
    # Renewed, but too long to keep: printed all the same (it lasts its 7 days), with a warning.
    fake.devices[fake.pins[2000][0]] = plexauth.load_device_key(folder / "device-key.json").public_jwk
    fake.extra = {"padding": "x" * 5000}
    code, out, err = cli("token")
    assert (code, out) == (0, fake.issued[-1] + "\n")
    assert err == (f"plexauth: warning: the renewed token could not be kept in {folder / 'login.json'} "
                   "(the token is too long to keep)\n")
    # While the kept token is good, nothing that stops the renewal stops the cron job: it warns.
    fake.extra = {}
    key_file = folder / "device-key.json"
    saved = key_file.read_text()
    fake.lifetime = -3600  # plex.tv answers with a JWT that has expired already: the kept one stays
    mismatched = {**json.loads(saved), "d": plexauth.generate_device_key().d}  # the halves of two keys
    for change, why in ((lambda: None, "the JWT expired already, at "),
                        (lambda: key_file.write_text(json.dumps(mismatched)), f"the device key {key_file} cannot sign "
                         "(key.d is not the private key of key.public_jwk); run plexauth login --jwt"),
                        (lambda: key_file.chmod(0o644), f"refusing the kept file {key_file}: it is readable or "
                         "writable by other users (mode 0644); remove it; run plexauth login --jwt"),
                        (key_file.unlink, f"cannot read the device key {key_file} (No such file or directory)")):
        change()
        code, out, err = cli("token")
        assert (code, out) == (0, first + "\n")
        assert err.startswith("plexauth: warning: the token could not be renewed ("), err
        assert why in err
    fake.lifetime = 3600
    key_file.write_text(saved)
    key_file.chmod(0o600)
    # An expired one whose renewal fails is an error.
    expired = plex_jwt(jwt_claims("my-jwt-device", lifetime=-120), plex_signing_key())
    (folder / "login.json").write_text(json.dumps({"token": expired, "client_identifier": "my-jwt-device",
                                                   "how": "jwt"}))
    fake.devices.clear()
    assert cli("token")[:2] == (3, "")
    (folder / "device-key.json").chmod(0o644)
    code, out, err = cli("token")
    assert (code, out) == (2, "")
    assert err == (f"plexauth: error: refusing the kept file {folder / 'device-key.json'}: it is readable or "
                   "writable by other users (mode 0644); remove it; run plexauth login --jwt\n")
    (folder / "device-key.json").unlink()
    assert cli("token")[2] == (f"plexauth: error: cannot read the device key {folder / 'device-key.json'} "
                               "(No such file or directory); run plexauth login --jwt\n")
    # A plain login after a JWT one forgets the JWT login's key.
    plexauth.save_device_key(RFC_KEY, folder / "device-key.json")
    code, _, err = cli("login")
    assert code == 0
    assert f"; {folder / 'device-key.json'} is removed;" in err
    (folder / "device-key.json").mkdir()
    (folder / "device-key.json" / "x").write_text("")
    code, _, err = cli("login")
    assert code == 0
    assert f"; the device key {folder / 'device-key.json'} could not be removed (" in err
    assert cli("login", "--jwt", "--password")[2] == ("plexauth: error: --jwt is for a sign-in with a code: "
                                                       "leave out --password\n")


def test_cli__login_jwt_without_cryptography_names_the_extra(cli: Any, httpserver: HTTPServer,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography", None)
    for name in [name for name in sys.modules if name.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    code, out, err = cli("login", "--jwt")
    assert (code, out) == (1, "")
    assert err == "plexauth: error: JWT sign-in needs the cryptography package: pip install 'plexauth-lite[jwt]'\n"
    assert len(httpserver.log) == 0  # nothing was asked of plex.tv


# ===========================================================================
# Tests: the README's promises
# ===========================================================================


def test_readme__guarantees_name_real_tests() -> None:
    """The module docstring maps the README's guarantees to tests: each name
    is a test here, and each figure is the suite's and the module's."""
    assert __doc__ is not None
    names = re.findall(r"``(test_\w+|_no_canary_in_logs|raises)``", __doc__)
    assert len(names) >= 40
    for name in names:
        assert callable(globals().get(name)), name
    text = " ".join(__doc__.split())

    def figure(n: int) -> str:
        return f"{n:,}".replace(",", " ")

    ci, local = settings.get_profile("ci").max_examples, settings.get_profile("default").max_examples
    count = len(OPS) + (0 if HAVE_CRYPTOGRAPHY else len(SIGNING_OPS))  # those are left out without the extra
    assert (
        f"for {figure(ci)} generated answers per operation in CI ({figure(ci * count)} in all, "
        f"for the {count} operations that talk HTTP; "
        f"{local} per operation in a local run)" in text
    )
    assert f"{THREADS} threads \u00d7 {CALLS_PER_THREAD} calls" in text
    assert f"reading stops at {plexauth.MAX_BODY_BYTES // 2**20} MiB" in text
    assert f"against {len(hostile_bodies()) + 1} hostile bodies" in text
    with open(os.path.join(os.path.dirname(__file__), "README.rst"), encoding="utf-8") as file:
        readme = " ".join(file.read().split())
    for promise in (
        f"A body stops at {plexauth.MAX_BODY_BYTES // 2**20} MiB (``MAX_BODY_BYTES``)",
        f"up to {plexauth._MAX_INTERIM_ANSWERS} before the final one",
        f"``total_timeout`` ({Config(CLIENT_ID).total_timeout:g} s)",
        f"JSON of over {figure(plexauth._MAX_NODES)} containers",
        f"XML of over {figure(plexauth._MAX_NODES)} nodes or {plexauth._MAX_XML_DEPTH} levels",
        "a call grows its process by < 64 MiB",
    ):
        assert promise in readme, promise


def test_readme__documents_every_command_option_variable_and_exit_code() -> None:
    """The README's command line section and --help name the same commands,
    options, variables and exit codes as the parser and the module."""
    import argparse

    with open(os.path.join(os.path.dirname(__file__), "README.rst"), encoding="utf-8") as file:
        readme = file.read()
    section = readme[readme.index("Command line\n---") : readme.index("Errors\n---")]
    parser = plexauth._parser()
    top_help = parser.format_help()
    (subcommands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in subcommands.choices.items():
        assert re.search(rf"^(``[\w-]+``, )?``{name}[` ]", section, re.MULTILINE), name
        assert name in top_help
        for action in sub._actions:
            for option in set(action.option_strings) - {"-h", "--help"}:
                assert f"``{option}" in section, (name, option)
    with open(plexauth.__file__, encoding="utf-8") as file:
        read = set(re.findall(r"\"(PLEX_[A-Z_]+|XDG_CONFIG_HOME)\"", file.read()))  # each variable's name
    assert read == set(re.findall(r"\b(PLEX_[A-Z_]+|XDG_CONFIG_HOME)\b", plexauth._ENVIRONMENT))
    for variable in read:
        assert variable in section, variable
        assert variable in top_help
    rows = re.findall(r"^  (\d)  (.+)$", plexauth._EXIT_CODES, re.MULTILINE)
    assert [code for code, _ in rows] == [str(n) for n in range(9)]
    for code, meaning in rows:
        assert f"\n{code}     {meaning}\n" in section.replace("``", ""), code
        assert f"{code}  {meaning}" in top_help
    assert "crontab" in section or "cron job" in section

"""The signed OAuth ``state`` (Clover ``state``, Poynt ``context``), the browser binding, and
operator-signed connect links.

State format: ``<payload>.<mac>``, both base64url without padding; the payload is compact JSON
``{"v": 2, "k": key id, "p": provider, "n": nonce, "iat": t, "exp": t + 600, "b": browser,
"ref"?, "lx"?, "ls"?, "m"?}`` and the MAC is HMAC-SHA256 over the payload's base64 text.

- **forged**: malformed, bad MAC, unknown key id, or issued for another provider;
- **expired**: older than ``STATE_TTL_S`` (10 minutes);
- **replayed**: the nonce was already used (a conditional put of ``state#<nonce>`` in the
  control table at callback time; ``expires_at`` = the state's expiry plus a day).

**Browser binding** (login CSRF): ``/connect`` sets the ``BINDING_COOKIE`` (random, HttpOnly,
SameSite=Lax, ``Secure`` when the public URL is https) and the state carries ``b``, a hash of
it; the callback requires the cookie whose hash is ``b``. A callback URL opened in another
browser (an attacker's half-finished flow sent to a victim) stores nothing. An existing valid
cookie is reused, so two tabs can connect at once.

**Keys**: the stage's state key secret (``settings.state_key_secret_name``), read through
Powertools parameters with a maximum age of ``KEY_MAX_AGE_S``. The state names its key by id
(``k``: a hash prefix, not the key). After a rotation (``put-secret-value``: the old value
becomes ``AWSPREVIOUS``) the previous key is still accepted for ``STATE_TTL_S +
KEY_MAX_AGE_S`` after the new version was created: the states in flight and those issued by
containers whose cache is not yet stale. An unknown key id forces one re-read.

**Connect links** (``posync connect-link``): ``/connect/{provider}?ref&exp&sig``; ``sig`` is
``<key id>.<HMAC(key, "posync-connect-link|v1|provider|ref|exp")>``: only a link the operator
signed carries a ``ref`` onto a connection. A link outlives a state; a key rotation voids
outstanding links after the previous key's window (issue new ones).

The state names no secret; it carries the provider, the operator's ``ref`` (with its link's
signature, so a retry link stays signed) and the merchant hint (ids in the URLs anyway).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from botocore.exceptions import ClientError

from posync.aws import client
from posync.config import Settings
from posync.domain import REF_PATTERN, check_provider
from posync.errors import InvalidState, PosyncError

STATE_TTL_S = 600
STATE_VERSION = 2
MAX_STATE_CHARS = 1536
MIN_KEY_BYTES = 16
KEY_MAX_AGE_S = 300  # how long a container trusts its cached copy of the state key
KEY_REFRESH_MIN_INTERVAL_S = 10.0  # an unknown key id re-reads the secret at most this often
STATE_PATTERN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
NONCE_PATTERN = re.compile(r"[A-Za-z0-9_-]{22}")
KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{8}")
BINDING_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
LINK_SIG_PATTERN = re.compile(r"[A-Za-z0-9_-]{8}\.[A-Za-z0-9_-]{43}")
USED_STATE_RETENTION_S = 86400
BINDING_COOKIE = "posync_connect"
MAX_LINK_TTL_S = 90 * 86400


class StateKeyUnavailable(PosyncError):
    """The state key secret is missing or too short (deployment problem, not the merchant's)."""


class InvalidLink(PosyncError):
    """A connect link whose ``ref`` is not signed by the operator, or whose signature expired."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"connect link {reason}")
        self.reason = reason  # "unsigned" | "forged" | "expired"


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(key: bytes) -> str:
    """A key's public name: 8 characters of a hash (says nothing usable about the key)."""
    return _b64e(hashlib.sha256(b"posync-state-key-id|" + key).digest())[:8]


def new_binding() -> str:
    """A fresh browser-binding cookie value (32 random bytes, base64url)."""
    return _b64e(secrets.token_bytes(32))


def binding_hash(cookie_value: str) -> str:
    return _b64e(hashlib.sha256(b"posync-browser|" + cookie_value.encode("ascii")).digest())[:22]


def binding_cookie(value: str, *, secure: bool, provider: str) -> str:
    """The ``Set-Cookie`` value of the binding cookie, sent back only to that provider's callback.

    SameSite=Lax: the provider's redirect back is a top-level GET, which Lax cookies follow.
    ``Secure`` only on an https public URL (the local front is plain http on 127.0.0.1).
    """
    attrs = [
        f"{BINDING_COOKIE}={value}",
        f"Path=/oauth/{check_provider(provider)}/callback",
        f"Max-Age={STATE_TTL_S}",
        "HttpOnly",
        "SameSite=Lax",
    ]
    if secure:
        attrs.append("Secure")
    return "; ".join(attrs)


def cookie_value(cookies: list[str] | None, name: str = BINDING_COOKIE) -> str | None:
    """The value of ``name`` among API Gateway v2 ``cookies`` (``["a=1", "b=2"]``); the last wins."""
    found = None
    for raw in cookies or []:
        for part in str(raw).split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                found = value.strip()
    return found


@dataclass(frozen=True)
class StateKeys:
    """The current key and, within its window after a rotation, the previous one."""

    current: bytes
    previous: bytes | None = None
    rotated_at: float | None = None  # when the current version was created (Unix seconds)

    def for_id(self, kid: str, now: float) -> bytes | None:
        if hmac.compare_digest(kid, key_id(self.current)):
            return self.current
        if (
            self.previous is not None
            and self.rotated_at is not None
            and now < self.rotated_at + STATE_TTL_S + KEY_MAX_AGE_S
            and hmac.compare_digest(kid, key_id(self.previous))
        ):
            return self.previous
        return None


KeySource = Callable[[], "bytes | StateKeys"]


@dataclass(frozen=True)
class StatePayload:
    provider: str
    nonce: str
    issued_at: int
    expires_at: int
    ref: str | None = None
    merchant_hint: str | None = None
    browser: str | None = None  # hash of the binding cookie
    link_expires_at: int | None = None  # the signed connect link the flow started from
    link_sig: str | None = None


class ExpiredState(InvalidState):
    """A genuine state that is too old; its payload (e.g. the ``ref``) may still be trusted."""

    def __init__(self, payload: StatePayload) -> None:
        super().__init__("expired")
        self.payload = payload


def key_from_secret(secret_string: str) -> bytes:
    """The HMAC key from the secret's text: base64 of random bytes (what provisioning writes);
    any other text (e.g. a CDK-generated password) is used as its UTF-8 bytes."""
    text = secret_string.strip()
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise StateKeyUnavailable("the OAuth state key is shorter than 16 bytes")
    return key


def _state_key_provider(sm: Any) -> Any:
    """A Powertools parameters provider whose value is the secret's current and previous versions."""
    from aws_lambda_powertools.utilities.parameters.base import BaseProvider

    class StateKeyVersions(BaseProvider):
        def __init__(self) -> None:
            super().__init__(client=sm)  # type: ignore[no-untyped-call]

        def _get(self, name: str, **sdk_options: Any) -> dict[str, Any]:
            cur = sm.get_secret_value(SecretId=name)
            created = cur.get("CreatedDate")
            previous: str | None = None
            try:
                previous = sm.get_secret_value(SecretId=name, VersionStage="AWSPREVIOUS")["SecretString"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                    raise
            return {
                "current": cur["SecretString"],
                "previous": previous,
                "rotated_at": created.timestamp() if isinstance(created, datetime) else None,
            }

        def _get_multiple(self, path: str, **sdk_options: Any) -> dict[str, str]:
            raise NotImplementedError("the state key is one secret")

    return StateKeyVersions()


class SecretsManagerStateKey:
    """The state keys, cached for at most ``max_age_s`` (Powertools parameters); ``refresh()``
    re-reads them (at most every ``KEY_REFRESH_MIN_INTERVAL_S``) when a state names a key id
    this container does not know yet."""

    def __init__(
        self,
        settings: Settings,
        max_age_s: int = KEY_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._name = settings.state_key_secret_name
        self._max_age_s = max_age_s
        self._clock = clock
        self._provider: Any = None
        self._last_forced = float("-inf")
        self._lock = threading.Lock()

    def _read(self, force: bool) -> StateKeys:
        from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

        with self._lock:
            if self._provider is None:
                self._provider = _state_key_provider(client("secretsmanager"))
            try:
                raw = self._provider.get(self._name, max_age=self._max_age_s, force_fetch=force)
            except GetParameterError as exc:
                raise StateKeyUnavailable("the OAuth state key secret cannot be read") from exc
        previous = raw.get("previous")
        return StateKeys(
            current=key_from_secret(raw["current"]),
            previous=key_from_secret(previous) if previous else None,
            rotated_at=raw.get("rotated_at"),
        )

    def __call__(self) -> StateKeys:
        return self._read(force=False)

    def refresh(self) -> StateKeys | None:
        """Re-read now, unless that was done less than ``KEY_REFRESH_MIN_INTERVAL_S`` ago (None)."""
        now = self._clock()
        with self._lock:
            if now - self._last_forced < KEY_REFRESH_MIN_INTERVAL_S:
                return None
            self._last_forced = now
        return self._read(force=True)


class _Keys:
    """A key source as ``StateKeys`` (tests pass ``lambda: key``), with one re-read on an unknown id."""

    def __init__(self, source: KeySource) -> None:
        self._source = source

    def get(self) -> StateKeys:
        got = self._source()
        return got if isinstance(got, StateKeys) else StateKeys(current=got)

    def find(self, kid: str, now: float) -> bytes | None:
        key = self.get().for_id(kid, now)
        refresh = getattr(self._source, "refresh", None)
        if key is None and refresh is not None:
            fresh = refresh()
            if fresh is not None:
                key = fresh.for_id(kid, now)
        return key


def _mac(key: bytes, text: str) -> str:
    return _b64e(hmac.new(key, text.encode("ascii"), hashlib.sha256).digest())


class StateSigner:
    def __init__(
        self,
        key: KeySource,
        clock: Callable[[], float] = time.time,
        ttl_s: int = STATE_TTL_S,
    ) -> None:
        self._keys = _Keys(key)
        self._clock = clock
        self._ttl_s = ttl_s

    def issue(
        self,
        provider: str,
        ref: str | None = None,
        merchant_hint: str | None = None,
        *,
        browser: str | None = None,
        link_expires_at: int | None = None,
        link_sig: str | None = None,
    ) -> str:
        """A fresh state. ``browser`` is the binding cookie's value (its hash goes in the state)."""
        now = int(self._clock())
        key = self._keys.get().current
        body: dict[str, Any] = {
            "v": STATE_VERSION,
            "k": key_id(key),
            "p": check_provider(provider),
            "n": _b64e(secrets.token_bytes(16)),
            "iat": now,
            "exp": now + self._ttl_s,
        }
        if browser:
            body["b"] = binding_hash(browser)
        if ref:
            body["ref"] = ref
        if link_expires_at is not None and link_sig:
            body["lx"] = int(link_expires_at)
            body["ls"] = link_sig
        if merchant_hint:
            body["m"] = merchant_hint
        payload = _b64e(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{_mac(key, payload)}"

    def verify(self, provider: str, state: str | None) -> StatePayload:
        """The state's payload, or ``InvalidState`` with reason missing/forged/expired."""
        if not state:
            raise InvalidState("missing")
        if len(state) > MAX_STATE_CHARS or not STATE_PATTERN.fullmatch(state):
            raise InvalidState("forged")
        payload_b64, mac = state.split(".")
        try:
            body = json.loads(_b64d(payload_b64))
            kid = body["k"] if isinstance(body, dict) else None
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise InvalidState("forged") from exc
        if not isinstance(kid, str) or not KID_PATTERN.fullmatch(kid):
            raise InvalidState("forged")
        key = self._keys.find(kid, self._clock())
        if key is None or not hmac.compare_digest(
            mac.encode("ascii"), _mac(key, payload_b64).encode("ascii")
        ):
            raise InvalidState("forged")
        try:
            lx = body.get("lx")
            parsed = StatePayload(
                provider=str(body["p"]),
                nonce=str(body["n"]),
                issued_at=int(body["iat"]),
                expires_at=int(body["exp"]),
                ref=body.get("ref"),
                merchant_hint=body.get("m"),
                browser=body.get("b"),
                link_expires_at=int(lx) if lx is not None else None,
                link_sig=body.get("ls"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidState("forged") from exc
        if (
            body.get("v") != STATE_VERSION
            or parsed.provider != provider
            or not NONCE_PATTERN.fullmatch(parsed.nonce)
        ):
            raise InvalidState("forged")
        if parsed.ref is not None and not REF_PATTERN.fullmatch(str(parsed.ref)):
            raise InvalidState("forged")
        if self._clock() >= parsed.expires_at:
            raise ExpiredState(parsed)
        return parsed

    @staticmethod
    def binding_valid(cookie: str) -> bool:
        """``cookie`` has the shape of a binding value (one this code could have made)."""
        return bool(BINDING_PATTERN.fullmatch(cookie))

    @staticmethod
    def bound_to(payload: StatePayload, cookie: str | None) -> bool:
        """The browser presenting ``cookie`` is the one the state was issued to."""
        if not payload.browser or not cookie or not BINDING_PATTERN.fullmatch(cookie):
            return False
        return hmac.compare_digest(payload.browser, binding_hash(cookie))


def _link_text(provider: str, ref: str, expires_at: int) -> str:
    return f"posync-connect-link|v1|{provider}|{ref}|{int(expires_at)}"


class LinkSigner:
    """Signs and checks the operator's connect links (the ``ref`` a connection will carry)."""

    def __init__(self, key: KeySource, clock: Callable[[], float] = time.time) -> None:
        self._keys = _Keys(key)
        self._clock = clock

    def sign(self, provider: str, ref: str, expires_at: int) -> str:
        if not REF_PATTERN.fullmatch(ref):
            raise ValueError("ref must be 1-64 characters of letters, digits and ._:@-")
        key = self._keys.get().current
        return f"{key_id(key)}.{_mac(key, _link_text(check_provider(provider), ref, expires_at))}"

    def verify(self, provider: str, ref: str | None, expires: str | None, sig: str | None) -> int | None:
        """The link's expiry when ``ref`` is signed and current; None when there is no ``ref``.

        Raises ``InvalidLink``: ``unsigned`` (a ref without a signature), ``forged`` or ``expired``.
        """
        if not ref:
            return None
        if not sig and not expires:
            raise InvalidLink("unsigned")
        if not sig or not expires or not expires.isdigit() or len(expires) > 12:
            raise InvalidLink("forged")
        if not LINK_SIG_PATTERN.fullmatch(sig) or not REF_PATTERN.fullmatch(ref):
            raise InvalidLink("forged")
        kid, mac = sig.split(".")
        exp = int(expires)
        key = self._keys.find(kid, self._clock())
        want = _mac(key, _link_text(check_provider(provider), ref, exp)) if key is not None else ""
        if not want or not hmac.compare_digest(mac.encode("ascii"), want.encode("ascii")):
            raise InvalidLink("forged")
        if self._clock() >= exp:
            raise InvalidLink("expired")
        return exp


class StateNonces(Protocol):
    def consume(self, nonce: str, expires_at: int) -> bool:
        """Record the nonce as used; False when it was used before."""
        ...


class DynamoStateNonces:
    """Used nonces in the control table: ``pk = state#<nonce>`` with a TTL."""

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self._table = settings.control_table
        self._clock = clock

    def consume(self, nonce: str, expires_at: int) -> bool:
        if not NONCE_PATTERN.fullmatch(nonce):
            return False
        try:
            client("dynamodb").put_item(
                TableName=self._table,
                Item={
                    "pk": {"S": f"state#{nonce}"},
                    "used_at": {"N": str(int(self._clock()))},
                    "expires_at": {"N": str(int(expires_at) + USED_STATE_RETENTION_S)},
                },
                ConditionExpression="attribute_not_exists(pk)",
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True

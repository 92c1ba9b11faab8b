"""Credentials: operator tokens for the HTTP API and console, fleet and per-device tokens for devices."""

import hashlib
import hmac
import secrets


def token_in(token, allowed):
    """True if ``token`` equals one of ``allowed``; every candidate is compared in constant time."""
    if not token or not isinstance(token, str):
        return False
    given = token.encode("utf-8", "surrogatepass")  # a lone surrogate is just a wrong token
    matches = [hmac.compare_digest(given, candidate.encode()) for candidate in allowed]
    return any(matches)


def operator_allowed(config, token):
    """True if ``token`` may use the HTTP API and the console (always, when no operator tokens are set)."""
    return not config["API_TOKENS"] or token_in(token, config["API_TOKENS"])


def request_token(headers, args=None):
    """The token a request carries: ``Authorization: Bearer``, then ``X-API-Key``, then ``?token=``."""
    authorization = headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("X-API-Key") or (args.get("token") if args is not None else None) or None


def hash_token(token):
    """What the store keeps of a per-device token."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_identity(token):
    """A short, stable name for an operator token (16 hex digits of its SHA-256), never the token itself."""
    return hash_token(token)[:16]


def new_token():
    """A fresh random token (256 bits, URL-safe)."""
    return secrets.token_urlsafe(32)

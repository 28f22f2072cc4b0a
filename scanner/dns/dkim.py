"""DKIM key records (RFC 6376 §3.6.1, RFC 8463, RFC 8301): a pure parser, no DNS."""

from __future__ import annotations

import base64
import functools
import binascii
import re
from dataclasses import dataclass


# RFC 6376 §3.2: tag-name = ALPHA *ALNUMPUNC; FWS around the name, the "=" and the value. The value is the
# rest of the spec without that FWS (stripped rather than matched: a lazy group is slow over a 400-octet key).
_TAG_NAME = re.compile(r"[ \t\r\n]*([A-Za-z][A-Za-z0-9_]*)[ \t\r\n]*=")
_FWS = " \t\r\n"
# RFC 6376 §3.2: VALCHAR = %x21-3A / %x3C-7E, with whitespace only between tvals.
_TAG_VALUE = re.compile(r"^(?:[\x21-\x3a\x3c-\x7e]+(?:[ \t\r\n]+[\x21-\x3a\x3c-\x7e]+)*)?$")
_WHITESPACE = re.compile(r"[ \t\r\n]+")
# RFC 8301 §3.2: verifiers must not accept RSA keys under 1024 bits.
RSA_MIN_VERIFIABLE_BITS = 1024
# RFC 8463 §4.2: an Ed25519 key is the raw 32-octet public key.
_ED25519_KEY_OCTETS = 32
_KNOWN_KEY_TYPES = ("rsa", "ed25519")


_MAX_PROBLEMS = 20
# The pure parsers here and in scanner/dns/dmarc.py and scanner/dns/spf.py are memoized: every check of a domain
# reads the same records. Longer (hostile) texts are parsed each time rather than kept in the cache.
CACHED_TEXT = 4096


def shown(text: str, limit: int = 60) -> str:
    """A value quoted and shortened for a problem message, so hostile data cannot flood the evidence."""
    quoted = repr(text)
    return quoted if len(quoted) <= limit else quoted[: limit - 1] + "…"


def _escape_octet(octet: int) -> str:
    """One octet inside a quoted master-file string (RFC 1035 §5.1): '"' and '\\' escaped, non-ASCII as \\DDD."""
    if octet in (34, 92):
        return "\\" + chr(octet)
    return chr(octet) if 32 <= octet < 127 else f"\\{octet:03d}"


def zone_txt(owner: str, text: str) -> str:
    """A TXT record as a master-file line, split into strings of at most 255 octets (RFC 6376 §3.6.2.2)."""
    data = text.encode("utf-8")
    chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
    strings = " ".join('"' + "".join(_escape_octet(b) for b in chunk) + '"' for chunk in chunks)
    return f"{owner.rstrip('.')}. TXT {strings}"


@dataclass(frozen=True, slots=True)
class TagList:
    """An RFC 6376 §3.2 tag=value list, in record order, with what was wrong with its syntax."""

    tags: tuple[tuple[str, str], ...]
    problems: tuple[str, ...] = ()

    def get(self, name: str) -> str | None:
        """The value of the first tag called ``name`` (tag names are case-sensitive here)."""
        for tag, value in self.tags:
            if tag == name:
                return value
        return None

    @property
    def names(self) -> tuple[str, ...]:
        """The tag names in record order."""
        return tuple(tag for tag, _ in self.tags)


def parse_tag_list(text: str, *, fold_names: bool = False) -> TagList:
    """Split a tag=value list (RFC 6376 §3.2); ``fold_names`` lowercases names (DMARC, RFC 7489 §6.4)."""
    if len(text) > CACHED_TEXT:
        return _split_tag_list(text, fold_names)
    return _split_tag_list_cached(text, fold_names)


def _split_tag_list(text: str, fold_names: bool) -> TagList:
    tags: list[tuple[str, str]] = []
    problems: list[str] = []
    specs = text.split(";")
    if len(specs) > 1 and not specs[-1].strip(_FWS):
        specs.pop()  # RFC 6376 §3.2: a trailing ";" is allowed
    for spec in specs:
        match = _TAG_NAME.match(spec)
        if match is None:
            problems.append(f"not a tag=value pair: {shown(spec.strip()) if spec.strip() else '(empty)'}")
            continue
        name, value = match.group(1), spec[match.end() :].strip(_FWS)
        if fold_names:
            name = name.lower()
        if not _TAG_VALUE.match(value):
            problems.append(f"tag {name!r} has characters a tag value cannot hold: {shown(value)}")
        if any(name == seen for seen, _ in tags):
            # RFC 6376 §3.2: a duplicated tag name makes the entire tag-list invalid.
            problems.append(f"tag {name!r} appears more than once")
            continue
        tags.append((name, value))
    if len(problems) > _MAX_PROBLEMS:
        problems[_MAX_PROBLEMS:] = [f"… and {len(problems) - _MAX_PROBLEMS} more problems"]
    return TagList(tuple(tags), tuple(problems))


_split_tag_list_cached = functools.lru_cache(maxsize=1024)(_split_tag_list)


@dataclass(frozen=True, slots=True)
class DkimKey:
    """What a DKIM key record says: key type and size, flags, revocation, and what is wrong with it."""

    key_type: str
    bits: int | None = None
    testing: bool = False
    strict: bool = False
    revoked: bool = False
    hashes: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()

    @property
    def usable(self) -> bool:
        """True when a verifier could check a signature with this key (valid, known type, not revoked)."""
        if self.problems or self.revoked or self.key_type not in _KNOWN_KEY_TYPES:
            return False
        return not (self.key_type == "rsa" and (self.bits or 0) < RSA_MIN_VERIFIABLE_BITS)


def _rsa_bits(der: bytes) -> tuple[int | None, str | None]:
    """The modulus size of an RSA key given as SubjectPublicKeyInfo or RSAPublicKey DER (RFC 6376 §3.6.1)."""
    from cryptography.exceptions import UnsupportedAlgorithm  # imported when a key is read: start-up time
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    try:
        key = load_der_public_key(der)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        return None, "p= is not a DER-encoded RSA public key"
    if not isinstance(key, rsa.RSAPublicKey):
        return None, f"p= holds a {type(key).__name__.removesuffix('PublicKey').removeprefix('_')} key, not RSA (k=rsa)"
    return key.key_size, None


def _ed25519_problem(raw: bytes) -> str | None:
    """Why p= is not a raw Ed25519 public key (RFC 8463 §4.2), or None."""
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if len(raw) != _ED25519_KEY_OCTETS:
        return f"p= holds {len(raw)} octets; an ed25519 key is the raw {_ED25519_KEY_OCTETS}-octet public key"
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return "p= is not a valid ed25519 public key"
    return None


def _colon_list(value: str) -> tuple[str, ...]:
    """A colon-separated list with whitespace removed (RFC 6376 §3.6.1 h=, s=, t=)."""
    return tuple(item for item in _WHITESPACE.sub("", value).split(":") if item)


def parse_dkim_key(record: str) -> DkimKey:
    """Parse one DKIM key record (a TXT record at ``<selector>._domainkey.<domain>``)."""
    return _parse_key(record) if len(record) > CACHED_TEXT else _parse_key_cached(record)


def _parse_key(record: str) -> DkimKey:
    parsed = parse_tag_list(record)
    problems = list(parsed.problems)
    version = parsed.get("v")
    if version is not None:
        # RFC 6376 §3.6.1: if present, v= must be "DKIM1" and the first tag; other values discard the record.
        if version != "DKIM1":
            problems.append(f"v= must be DKIM1, not {shown(version)}")
        elif parsed.names[0] != "v":
            problems.append("v=DKIM1 must be the first tag")
    key_type = (parsed.get("k") or "rsa").strip()
    if key_type not in _KNOWN_KEY_TYPES:
        # RFC 6376 §3.6.1: verifiers ignore keys of a type they do not know, so no signature verifies.
        problems.append(f"k={shown(key_type)} is not a known key type (rsa, ed25519)")
    hashes = _colon_list(parsed.get("h") or "")
    if hashes and "sha256" not in hashes:
        # RFC 8301 §3.1: sha1 must not be used, so a key limited to it (or to unknown hashes) verifies nothing.
        problems.append(f"h={':'.join(hashes)} allows no usable hash algorithm (sha256)")
    services = _colon_list(parsed.get("s") or "*")
    if not {"*", "email"} & set(services):
        problems.append(f"s={':'.join(services)} does not include email or *")
    flags = _colon_list(parsed.get("t") or "")
    data = parsed.get("p")
    bits = None
    revoked = False
    if data is None:
        problems.append("p= (the public key) is missing")
    else:
        compact = _WHITESPACE.sub("", data)
        revoked = compact == ""  # RFC 6376 §3.6.1: an empty p= means the key has been revoked
        if not revoked:
            try:
                raw = base64.b64decode(compact, validate=True)
            except (binascii.Error, ValueError):
                raw = None
                problems.append("p= is not valid base64")
            if raw is not None and key_type == "rsa":
                bits, problem = _rsa_bits(raw)
                if problem:
                    problems.append(problem)
            elif raw is not None and key_type == "ed25519":
                problem = _ed25519_problem(raw)
                if problem:
                    problems.append(problem)
    return DkimKey(
        key_type=key_type,
        bits=bits,
        testing="y" in flags,
        strict="s" in flags,
        revoked=revoked,
        hashes=hashes,
        services=services,
        problems=tuple(problems),
    )


_parse_key_cached = functools.lru_cache(maxsize=1024)(_parse_key)

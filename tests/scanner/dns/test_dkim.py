"""The DKIM key-record parser (RFC 6376 §3.6.1, RFC 8463, RFC 8301) on real keys and hostile text."""

from __future__ import annotations

import base64

import dns.rdata
import dns.rdataclass
import dns.rdatatype
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from scanner.dns.dkim import parse_dkim_key, parse_tag_list, zone_txt


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@pytest.fixture(scope="module")
def rsa_keys() -> dict[str, str]:
    """Real RSA public keys, base64 DER: SubjectPublicKeyInfo and PKCS#1 RSAPublicKey forms."""
    keys = {}
    for bits in (1024, 2048):
        public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
        keys[f"spki{bits}"] = _b64(
            public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        keys[f"pkcs1_{bits}"] = _b64(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1))
    return keys


def _ed25519_raw() -> str:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    return _b64(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def test_rsa_key_sizes_come_from_the_der(rsa_keys) -> None:
    for bits in (1024, 2048):
        for form in (f"spki{bits}", f"pkcs1_{bits}"):
            key = parse_dkim_key(f"v=DKIM1; k=rsa; p={rsa_keys[form]}")
            assert (key.key_type, key.bits, key.problems, key.usable) == ("rsa", bits, (), True), form


def test_rsa_is_the_default_type_and_whitespace_in_the_key_is_ignored(rsa_keys) -> None:
    folded = " ".join(rsa_keys["spki2048"][i : i + 60] for i in range(0, len(rsa_keys["spki2048"]), 60))
    key = parse_dkim_key(f"p={folded}")
    assert key.key_type == "rsa" and key.bits == 2048 and key.usable


def test_ed25519_key_is_the_raw_32_octets() -> None:
    key = parse_dkim_key(f"v=DKIM1; k=ed25519; p={_ed25519_raw()}")
    assert (key.key_type, key.bits, key.problems, key.usable) == ("ed25519", None, (), True)


def test_ed25519_key_in_spki_form_is_a_problem() -> None:
    public = ed25519.Ed25519PrivateKey.generate().public_key()
    spki = _b64(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    key = parse_dkim_key(f"v=DKIM1; k=ed25519; p={spki}")
    assert not key.usable and "32-octet" in key.problems[0]


def test_non_rsa_key_under_k_rsa_is_a_problem() -> None:
    public = ec.generate_private_key(ec.SECP256R1()).public_key()
    spki = _b64(public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
    key = parse_dkim_key(f"v=DKIM1; p={spki}")
    assert key.bits is None and "not RSA" in key.problems[0]


def test_empty_p_is_revoked_not_a_syntax_error() -> None:
    key = parse_dkim_key("v=DKIM1; k=rsa; p=")
    assert key.revoked and key.problems == () and not key.usable


def test_flags(rsa_keys) -> None:
    key = parse_dkim_key(f"v=DKIM1; t=y:s; p={rsa_keys['spki2048']}")
    assert key.testing and key.strict and key.usable
    assert not parse_dkim_key(f"t=s; p={rsa_keys['spki2048']}").testing
    assert parse_dkim_key(f"t = y : x ; p={rsa_keys['spki2048']}").testing  # unknown flags are ignored


@pytest.mark.parametrize(
    ("record", "problem"),
    [
        ("v=DKIM2; p=AAAA", "v= must be DKIM1"),
        ("k=rsa; v=DKIM1; p=", "must be the first tag"),
        ("v=DKIM1; k=rsa", "p= (the public key) is missing"),
        ("v=DKIM1; p=!!!notbase64", "not valid base64"),
        ("v=DKIM1; p=AAAAAAAA", "not a DER-encoded RSA public key"),
        ("v=DKIM1; k=dsa; p=AAAA", "not a known key type"),
        ("v=DKIM1; h=sha1; p=", "no usable hash"),
        ("v=DKIM1; s=tlsrpt; p=", "does not include email"),
        ("v=DKIM1; p=; p=", "appears more than once"),
        ("v=DKIM1;; p=", "not a tag=value pair"),
        ("v=DKIM1; 1x=2; p=", "not a tag=value pair"),
        ("v=DKIM1; n=caf\u00e9; p=", "characters a tag value cannot hold"),
    ],
)
def test_malformed_records(record: str, problem: str) -> None:
    key = parse_dkim_key(record)
    assert any(problem in p for p in key.problems), key.problems
    assert not key.usable


def test_tag_names_are_case_sensitive_and_unknown_tags_ignored(rsa_keys) -> None:
    key = parse_dkim_key(f"v=DKIM1; x_vendor=<script>alert(1)</script>; p={rsa_keys['spki2048']}")
    assert key.usable
    assert "p= (the public key) is missing" in parse_dkim_key(f"v=DKIM1; P={rsa_keys['spki2048']}").problems


def test_hostile_records_give_problems_not_crashes() -> None:
    hostile = [
        "x" * 255 * 200,
        "p=" + "A" * 65000,
        ";" * 5000,
        "v=DKIM1; p=" + "\u202e\u0000" * 300,
        "<script>alert(1)</script>",
        "=====",
        "v=DKIM1; k=" + "r" * 10000 + "; p=",
    ]
    for record in hostile:
        key = parse_dkim_key(record)
        assert key.problems and not key.usable
        assert all(len(p) < 200 for p in key.problems)  # values are clipped in messages


def test_tag_list_folding_for_dmarc() -> None:
    tags = parse_tag_list("V=DMARC1; P=reject;", fold_names=True)
    assert tags.tags == (("v", "DMARC1"), ("p", "reject")) and tags.problems == ()


def test_zone_txt_round_trips_through_a_master_file_parser() -> None:
    text = 'v=DKIM1; n="quoted" back\\slash caf\u00e9 <script>; p=' + "A" * 600
    line = zone_txt("s1._domainkey.acme.example.", text)
    owner, kind, rdata = line.split(" ", 2)
    assert (owner, kind) == ("s1._domainkey.acme.example.", "TXT")
    parsed = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, rdata)
    assert all(len(s) <= 255 for s in parsed.strings)
    assert b"".join(parsed.strings).decode("utf-8") == text

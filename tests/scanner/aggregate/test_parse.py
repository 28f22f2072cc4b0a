"""Reading DMARC aggregate reports: real samples of both schemas and every wrapping, and hostile files refused."""

from __future__ import annotations

import gzip
import io
import zipfile
from email.message import EmailMessage
from pathlib import Path

import pytest

from scanner.aggregate.parse import MAX_XML_BYTES, ReportError, read_report_bytes, read_report_file

DATA = Path(__file__).resolve().parents[2] / "data" / "dmarc-aggregate"
GOOD = sorted((DATA / "good").iterdir())
HEADER = b"""<?xml version="1.0"?>
<feedback><report_metadata><org_name>x</org_name><report_id>1</report_id>
<date_range><begin>1700000000</begin><end>1700086399</end></date_range></report_metadata>
<policy_published><domain>example.com</domain><p>none</p></policy_published>"""


def test_every_good_sample_reads_and_names_34_reports() -> None:
    keys = set()
    for path in GOOD:
        for report in read_report_file(path):
            keys.add((report.org_name, report.report_id))
            assert report.records and report.policy_domain and report.begin <= report.end, path.name
    assert len(GOOD) == 40 and len(keys) == 34


def test_rfc9990_namespace_and_tags_are_read() -> None:
    [report] = read_report_file(DATA / "good" / "parsedmarc__rfc9990-sample.xml")
    assert report.schema == "urn:ietf:params:xml:ns:dmarc-2.0"
    assert (report.org_name, report.report_id, report.policy_domain) == (
        "Sample Reporter", "3v98abbp8ya9n3va8yr8oa3ya", "example.com")
    assert report.policy["np"] == "none" and report.policy["discovery_method"] == "treewalk"
    [record] = report.records
    assert (record.source_ip, record.count, record.dkim, record.spf) == ("192.0.2.123", 123, "pass", "fail")
    assert record.dmarc_pass and record.envelope_from == "example.com"
    assert [(a.method, a.domain, a.selector, a.result) for a in record.auth] == [
        ("dkim", "example.com", "abc123", "pass"), ("spf", "example.com", "", "fail")]


def test_results_are_case_blind_and_reasons_kept() -> None:
    [report] = read_report_file(DATA / "good" / "parsedmarc__report_with_upper_cased_pass.xml")
    assert all(r.dmarc_pass for r in report.records)
    [bis] = read_report_file(DATA / "good" / "parsedmarc__rfc9990-example.net!example.com!1700000000!1700086399.xml")
    failing = [r for r in bis.records if not r.dmarc_pass]
    assert failing and failing[0].disposition == "reject" and failing[0].reasons


@pytest.mark.parametrize("name", [
    "mox__google.eml",  # zip attachment
    "mox__outlook.eml",  # gzip attachment
    "parsedmarc__mimecast-weird-gzip.eml",  # a gzip body with a CRLF after its end
    "tierpod__test.xml.zip",
    "parsedmarc__nice-input.xml.gz",
])
def test_wrapped_reports_unwrap(name: str) -> None:
    assert read_report_file(DATA / "good" / name)[0].records


def test_gzip_and_zip_of_the_same_report_read_alike() -> None:
    plain = read_report_file(DATA / "good" / "tierpod__test.xml")
    assert read_report_file(DATA / "good" / "tierpod__test.xml.gz") == plain
    assert read_report_file(DATA / "good" / "tierpod__test.xml.zip") == plain


def _gzip_bomb() -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=9) as stream:
        stream.write(HEADER)
        block = b" " * (1 << 20)
        for _ in range(MAX_XML_BYTES // len(block) + 8):
            stream.write(block)
    return out.getvalue()


def _zip_bomb() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("r.xml", "w") as member:
        member.write(HEADER)
        block = b" " * (1 << 20)
        for _ in range(MAX_XML_BYTES // len(block) + 8):
            member.write(block)
    return out.getvalue()


@pytest.mark.parametrize(("name", "data", "reason"), [
    ("empty.xml", b"", "empty file"),
    ("laughs.xml", b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">'
     b']><feedback>&b;</feedback>', "DTD"),
    ("external.xml", b'<?xml version="1.0"?><!DOCTYPE f [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     b"<feedback><report_metadata><report_id>&x;</report_id></report_metadata></feedback>", "DTD"),
    ("inventory.xml", b"<inventory><item/></inventory>", "root element is <inventory>"),
    ("truncated.xml", HEADER + b"<record><row><source_ip>192.0.2.1</source_ip><count>1</count>", "not well-formed"),
    ("truncated.xml.gz", gzip.compress(HEADER + b"</feedback>")[:-12], "truncated"),
    ("garbage.gz", b"\x1f\x8b\x08\x00" + b"\x00" * 40, "gzip"),
    ("bad-ip.xml", HEADER + b"<record><row><source_ip>not-an-ip</source_ip><count>1</count></row></record>"
     b"</feedback>", "source_ip 'not-an-ip'"),
    ("no-id.xml", b"<feedback><report_metadata><org_name>x</org_name></report_metadata></feedback>", "report_id"),
    ("outlook.msg", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 64, "Outlook .msg"),
])
def test_bad_files_are_refused_with_the_reason(name: str, data: bytes, reason: str) -> None:
    with pytest.raises(ReportError, match=reason.replace(".", r"\.").replace("(", r"\(")):
        read_report_bytes(data, name)


@pytest.mark.parametrize("make", [_gzip_bomb, _zip_bomb])
def test_compression_bombs_are_refused_without_reading_them_whole(make) -> None:  # type: ignore[no-untyped-def]
    import tracemalloc

    bomb = make()
    assert len(bomb) < 1 << 20  # a small file ...
    tracemalloc.start()
    with pytest.raises(ReportError, match="bomb"):
        read_report_bytes(bomb, "bomb")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 3 * MAX_XML_BYTES  # ... stopped at the bound, never inflated to its full size


def test_a_message_without_a_report_is_refused_and_a_bad_attachment_named() -> None:
    message = EmailMessage()
    message["Subject"] = "Report domain: example.com Submitter: example.net"
    message.set_content("Please find the report attached.")
    with pytest.raises(ReportError, match="no DMARC report attached"):
        read_report_bytes(bytes(message), "no-report.eml")
    message.add_attachment(b"\x1f\x8b\x08\x00broken", maintype="application", subtype="gzip",
                           filename="example.com!x.xml.gz")
    with pytest.raises(ReportError, match=r"example\.com!x\.xml\.gz: not a readable gzip file"):
        read_report_bytes(bytes(message), "bad-attachment.eml")


def test_edge_samples_are_refused_or_read_never_crash() -> None:
    for path in sorted((DATA / "edge").iterdir()):
        try:
            read_report_file(path)
        except ReportError as exc:
            assert str(exc), path.name

"""Drift checks: the recorded state is collected over real DNS on loopback, then the zone changes."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime

import dns.zone
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from checks.drift import catchall_enabled, dns_weakened, forwarding_added, mx_changed
from checks.evaluate import evaluate
from checks.registry import Policy
from scanner.adapters.base import collect_all
from scanner.dns.client import DnsClient
from scanner.model import (
    Coverage,
    DnsFacts,
    Domain,
    DomainState,
    Fact,
    FactState,
    Finding,
    Forward,
    ForwardMechanism,
    Inventory,
    Mailbox,
    PreviousState,
    Status,
    Tenant,
)
from scanner.pipeline import snapshot_items
from scanner.store.database import Store
from scanner.loopback.zoneserver import ZoneServer
from tests.contract.mailcow import MailcowState, mailcow_app
from tests.contract.server import ContractServer
from tests.scanner.adapters.test_mailcow import _adapter, _alias, _box, _domain

NOW = datetime(2026, 11, 25, tzinfo=UTC)
BEFORE = datetime(2026, 11, 18, tzinfo=UTC)
TENANT = Tenant("acme", "files", ("acme.example",), dkim_selectors=("s1",))
COVERED = tuple(Coverage("acme", f, FactState.COLLECTED) for f in (Fact.MAILBOX_FORWARDS, Fact.DOMAIN_CATCH_ALL))


def _key(bits: int) -> str:
    public = rsa.generate_private_key(public_exponent=65537, key_size=bits).public_key()
    der = public.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    text = base64.b64encode(der).decode()
    return " ".join(f'"{text[i:i + 200]}"' for i in range(0, len(text), 200))


KEY_2048 = _key(2048)
KEY_1024 = _key(1024)
STRONG = (
    '@ MX 10 mx1.acme.example.\n@ TXT "v=spf1 ip4:127.0.0.10 -all"\n'
    '_dmarc TXT "v=DMARC1; p=reject; rua=mailto:d@acme.example"\n'
    f's1._domainkey TXT "v=DKIM1; k=rsa; p=" {KEY_2048}\n'
)


def _serve(server: ZoneServer, records: str) -> None:
    text = (
        "$ORIGIN acme.example.\n$TTL 300\n@ IN SOA ns1 hostmaster 1 3600 600 86400 300\n@ IN NS ns1\n"
        f"ns1 IN A 127.0.0.53\n{records}\n"
    )
    server.add_zone(dns.zone.from_text(text, origin="acme.example", relativize=False))


def _facts(server: ZoneServer) -> DnsFacts:
    client = DnsClient([server.nameserver], timeout=0.6)
    return asyncio.run(client.collect_domain("acme.example", selectors=("s1",)))


def _judge(domain: Domain, previous: PreviousState | None, *checks, mailboxes: tuple[Mailbox, ...] = ()) -> list[Finding]:
    inventory = Inventory((TENANT,), (domain,), mailboxes, {}, (), COVERED, previous=previous)
    return evaluate(inventory, list(checks), policy=Policy(), senders={}, now=NOW)


def _previous(facts: DnsFacts | None = None, catch_all: str | None = None, mode: str | None = None,
              forwards: dict[str, tuple[Forward, ...]] | None = None) -> PreviousState:
    domains = {"acme/acme.example": DomainState(dict(facts.answers), catch_all, mode)} if facts is not None else {}
    return PreviousState("run-before", BEFORE, frozenset({"acme"}), domains, forwards or {})


def _items(findings: list[Finding]) -> dict[str, Finding]:
    return {f.item: f for f in findings}


def test_first_run_has_no_baseline_and_passes(dns_server) -> None:
    _serve(dns_server, STRONG)
    domain = Domain("acme.example", "acme", dns=_facts(dns_server))
    for finding in _judge(domain, None, dns_weakened, mx_changed, catchall_enabled):
        assert finding.status is Status.PASS
        assert "no earlier run" in finding.evidence["note"]


def test_lowered_dmarc_policy_fails_with_before_and_after(dns_server) -> None:
    _serve(dns_server, STRONG)
    before = _previous(_facts(dns_server))
    _serve(dns_server, STRONG.replace("p=reject", "p=none"))
    domain = Domain("acme.example", "acme", dns=_facts(dns_server))
    found = _items(_judge(domain, before, dns_weakened))
    dmarc = found["dmarc"]
    assert dmarc.status is Status.FAIL
    assert dmarc.evidence["policy_before"] == "reject" and dmarc.evidence["policy_after"] == "none"
    assert dmarc.evidence["before"] == "v=DMARC1; p=reject; rua=mailto:d@acme.example"
    assert dmarc.evidence["after"] == "v=DMARC1; p=none; rua=mailto:d@acme.example"
    assert dmarc.evidence["publish"] == '_dmarc.acme.example. TXT "v=DMARC1; p=reject; rua=mailto:d@acme.example"'
    assert dmarc.evidence["compared_with_run"] == "run-before"
    assert {found[i].status for i in ("spf", "dkim", "mta_sts")} == {Status.PASS}


def test_unchanged_or_stronger_dns_passes(dns_server) -> None:
    _serve(dns_server, STRONG.replace("p=reject", "p=quarantine").replace("-all", "~all"))
    before = _previous(_facts(dns_server), mode="testing")
    _serve(dns_server, STRONG)
    domain = Domain("acme.example", "acme", dns=_facts(dns_server))
    domain = Domain(domain.name, domain.tenant, dns=DnsFacts(domain.dns.answers, mta_sts_policy=_Policy("enforce")))
    assert {f.item: f.status for f in _judge(domain, before, dns_weakened)} == {
        "dmarc": Status.PASS, "spf": Status.PASS, "dkim": Status.PASS, "mta_sts": Status.PASS,
    }


def test_loosened_spf_removed_and_shortened_dkim_fail(dns_server) -> None:
    _serve(dns_server, STRONG)
    before = _previous(_facts(dns_server))
    _serve(dns_server, STRONG.replace("-all", "?all").replace(KEY_2048, KEY_1024))
    domain = Domain("acme.example", "acme", dns=_facts(dns_server))
    found = _items(_judge(domain, before, dns_weakened))
    assert found["spf"].status is Status.FAIL
    assert (found["spf"].evidence["all_before"], found["spf"].evidence["all_after"]) == ("-all", "?all")
    assert found["spf"].evidence["publish"] == 'acme.example. TXT "v=spf1 ip4:127.0.0.10 -all"'
    assert found["dkim"].status is Status.FAIL
    assert found["dkim"].evidence["weakened"] == [
        {"selector": "s1", "change": "shortened", "before": "rsa 2048 bits", "after": "rsa 1024 bits"}
    ]
    _serve(dns_server, STRONG.split("s1._domainkey")[0])
    gone = _items(_judge(Domain("acme.example", "acme", dns=_facts(dns_server)), before, dns_weakened))
    assert gone["dkim"].evidence["weakened"][0]["change"] == "removed"


class _Policy:
    """Stands in for scanner.mtasts.MtaStsPolicy: the check reads only ``mode``."""

    def __init__(self, mode: str) -> None:
        self.mode = mode


def test_mta_sts_mode_lowered_fails(dns_server) -> None:
    _serve(dns_server, STRONG + '_mta-sts TXT "v=STSv1; id=1"\n')
    facts = _facts(dns_server)
    before = _previous(facts, mode="enforce")
    domain = Domain("acme.example", "acme", dns=DnsFacts(facts.answers, mta_sts_policy=_Policy("testing")))
    finding = _items(_judge(domain, before, dns_weakened))["mta_sts"]
    assert finding.status is Status.FAIL
    assert (finding.evidence["before"], finding.evidence["after"]) == ("enforce", "testing")


def test_servfail_now_gives_error_for_that_aspect_only(dns_server) -> None:
    _serve(dns_server, STRONG)
    before = _previous(_facts(dns_server))
    dns_server.servfail_names.add("_dmarc.acme.example")
    found = _items(_judge(Domain("acme.example", "acme", dns=_facts(dns_server)), before, dns_weakened))
    assert found["dmarc"].status is Status.ERROR and "SERVFAIL" in found["dmarc"].reason
    assert found["spf"].status is Status.PASS


def test_mx_changed_fails_and_timeout_errors(dns_server) -> None:
    _serve(dns_server, STRONG)
    before = _previous(_facts(dns_server))
    _serve(dns_server, STRONG.replace("mx1.acme.example.", "mx.attacker.test."))
    finding = _judge(Domain("acme.example", "acme", dns=_facts(dns_server)), before, mx_changed)[0]
    assert finding.status is Status.FAIL
    assert finding.evidence["before"] == ["10 mx1.acme.example"]
    assert finding.evidence["after"] == ["10 mx.attacker.test"]
    assert finding.evidence["publish"] == ["acme.example. MX 10 mx1.acme.example."]
    _serve(dns_server, STRONG)
    same = _judge(Domain("acme.example", "acme", dns=_facts(dns_server)), before, mx_changed)[0]
    assert same.status is Status.PASS
    dns_server.timeout_names.add("acme.example")
    slow = _judge(Domain("acme.example", "acme", dns=_facts(dns_server)), before, mx_changed)[0]
    assert slow.status is Status.ERROR


def test_catchall_enabled_fails_only_when_newly_on(dns_server) -> None:
    _serve(dns_server, STRONG)
    facts = _facts(dns_server)
    on = Domain("acme.example", "acme", catch_all="all@acme.example", dns=facts)
    finding = _judge(on, _previous(facts), catchall_enabled)[0]
    assert finding.status is Status.FAIL
    assert (finding.evidence["before"], finding.evidence["after"]) == (None, "all@acme.example")
    assert _judge(on, _previous(facts, catch_all="all@acme.example"), catchall_enabled)[0].status is Status.PASS
    failed = Inventory((TENANT,), (on,), (), {}, (), (Coverage("acme", Fact.DOMAIN_CATCH_ALL, FactState.FAILED, "api"),),
                       previous=_previous(facts))
    assert evaluate(failed, [catchall_enabled], policy=Policy(), senders={}, now=NOW)[0].status is Status.ERROR


def test_forwarding_added_fails_with_before_and_after(dns_server) -> None:
    _serve(dns_server, STRONG)
    domain = Domain("acme.example", "acme", dns=_facts(dns_server))
    old = (Forward("ann@acme.example", ForwardMechanism.ALIAS),)
    new = Mailbox("acme", "bob@acme.example", forwards=(*old, Forward("bob@gmail.test", ForwardMechanism.INBOX_RULE)))
    previous = _previous(forwards={"acme/bob@acme.example": old})
    finding = next(f for f in _judge(domain, previous, forwarding_added, mailboxes=(new,)))
    assert finding.status is Status.FAIL
    assert finding.evidence["added"] == ["bob@gmail.test"]
    assert finding.evidence["before"] == ["ann@acme.example"]
    assert finding.evidence["after"] == ["ann@acme.example", "bob@gmail.test"]
    assert finding.remediation is not None and finding.remediation.action == "forwarding.disable"
    kept = Mailbox("acme", "bob@acme.example", forwards=old)
    assert _judge(domain, previous, forwarding_added, mailboxes=(kept,))[0].status is Status.PASS
    first = _judge(domain, None, forwarding_added, mailboxes=(new,))[0]
    assert first.status is Status.PASS and "no earlier run" in first.evidence["note"]
    unknown = Inventory((TENANT,), (), (new,), {}, (), (Coverage("acme", Fact.MAILBOX_FORWARDS, FactState.FAILED, "x"),),
                        previous=previous)
    assert evaluate(unknown, [forwarding_added], policy=Policy(), senders={}, now=NOW)[0].status is Status.ERROR


def test_an_alias_turned_back_on_is_a_forward_added_through_the_store_and_change_log(tmp_path) -> None:
    """mailcow contract server → ALIAS subject → store snapshot → previous state → drift.forwarding_added."""
    state = MailcowState(domains=[_domain("acme.example")])
    state.mailboxes["ana@acme.example"] = _box("ana@acme.example")
    number = _alias(state, "sales@acme.example", "ana@acme.example,sales@partner.test", active=0)
    server = ContractServer(mailcow_app(state)).start()
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    tenant = Tenant("acme", "mailcow", ("acme.example",))
    try:
        inventories = []
        for run, when in (("run1", BEFORE), ("run2", NOW)):
            collected = asyncio.run(collect_all(_adapter(server, tmp_path), tenant))
            store.start_run(run, when, "digest", "test")
            inventory = Inventory((tenant,), (), collected.mailboxes, {}, (), collected.coverage,
                                  previous=store.previous_state(run))
            store.save_snapshot(run, list(snapshot_items(inventory)))
            store.finish_run(run, when, "complete", {})
            inventories.append(inventory)
            state.aliases[number]["active"] = 1  # someone turns the alias back on between the runs
        first, second = (evaluate(i, [forwarding_added], policy=Policy(), senders={}, now=NOW) for i in inventories)
        changes = {(c.object_type, c.object_key, c.field, c.action): (c.before, c.after)
                   for c in store.changes(run_id="run2")}
    finally:
        store.close()
        server.stop()
    assert [(f.subject, f.status) for f in first] == [("ana@acme.example", Status.PASS),
                                                      ("sales@acme.example", Status.PASS)]
    added = {f.subject: f for f in second}["sales@acme.example"]
    assert added.status is Status.FAIL
    assert (added.evidence["added"], added.evidence["before"]) == (["sales@partner.test"], [])
    forward = ("forward", "sales@acme.example -> sales@partner.test", "", "added")
    assert changes == {("mailbox", "sales@acme.example", "status", "changed"): ("disabled", "active"),
                       forward: (None, {"mechanism": "alias"})}


def test_no_drift_aspect_passes_on_a_lookup_that_failed_now(dns_server, add_zone) -> None:
    # Issue 14: with DNS failing, drift.dns_weakened passed. A failed lookup is unknown, baseline or not.
    add_zone("acme.example", '@ TXT "v=spf1 -all"\n_dmarc TXT "v=DMARC1; p=reject"')
    dns_server.timeout_names.update({"_dmarc.acme.example", "acme.example"})
    domain = Domain("acme.example", "acme", dns=_facts(dns_server))
    without_baseline = _items(_judge(domain, None, dns_weakened))
    assert without_baseline["dmarc"].status is Status.ERROR and without_baseline["spf"].status is Status.ERROR
    empty = _previous(DnsFacts())  # an earlier run that recorded no answer for these
    found = _items(_judge(domain, empty, dns_weakened))
    assert found["dmarc"].status is Status.ERROR and found["spf"].status is Status.ERROR
    assert Status.PASS not in {f.status for f in found.values() if f.item in ("dmarc", "spf")}

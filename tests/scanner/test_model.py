"""The normalized model: what its objects say of themselves."""

from __future__ import annotations

from scanner.model import Domain, Inventory, Tenant


def test_an_inventory_repr_counts_what_it_holds_instead_of_listing_it() -> None:
    tenant = Tenant("acme", None, ("a.example", "b.example"))
    inventory = Inventory((tenant,), (Domain("a.example", "acme"), Domain("b.example", "acme")))
    assert repr(inventory) == "Inventory(1 tenants, 2 domains, 0 mailboxes, 0 coverage entries)"

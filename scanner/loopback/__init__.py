"""Servers on loopback for the demo and the tests: an authoritative DNS server and an MTA-STS policy server.
Imports nothing of mailwarden's (only the standard library, dnspython and cryptography), so anything may start them."""

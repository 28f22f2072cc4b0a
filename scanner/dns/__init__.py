"""The DNS stage: a UDP/TCP transport and a client over it, and the parsers of what DNS holds (SPF, DMARC, DKIM,
MTA-STS, record data). Imports only scanner.model, scanner.errors and the standard library and dnspython."""

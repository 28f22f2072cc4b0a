"""DMARC aggregate reports (rua): the parser, their tables and queries, and the import from files or IMAP.
Imports scanner.model, scanner.errors, scanner.config, scanner.dns.client and scanner.store.database; never the CLI or the service."""

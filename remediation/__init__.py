"""Remediation jobs: the only write path (actions, signed links, audit log) — not built yet."""

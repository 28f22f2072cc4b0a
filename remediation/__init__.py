"""Remediation: the only write path (actions through adapters, jobs, signed links, audit log, web app)."""

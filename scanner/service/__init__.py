"""`mailwarden serve`: the scheduler, /healthz and the remediation app under one process, and `status`.
The top of the pipeline: it may import everything below it; only scanner.cli imports it."""

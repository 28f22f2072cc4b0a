"""What persists: the store (runs, snapshots, findings, jobs, audit tables), the change log, the scan and service
leases, and domain baselines. Imports scanner.model, scanner.errors, scanner.config and scanner.dns, never above."""

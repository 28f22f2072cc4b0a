"""Tests of scanner.adapters."""

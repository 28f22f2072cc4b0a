"""Tests for mailwarden, mirroring its packages."""

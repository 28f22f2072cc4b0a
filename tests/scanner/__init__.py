"""Tests for the scanner package."""

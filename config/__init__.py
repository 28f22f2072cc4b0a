"""Bundled data, installed as the package ``scanner.bundled``: default policy, sender catalogue, demo estate."""

"""mailwarden's scanner: configuration, the normalized model, collection, DNS and the store."""

__version__ = "0.1.0"

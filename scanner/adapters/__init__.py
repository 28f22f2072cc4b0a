"""Provider adapters: each maps one provider onto the normalized model."""

"""The check registry, the evaluate stage and the built-in checks."""

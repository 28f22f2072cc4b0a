"""Renderers for stored findings: JSON, CSV, HTML and the run manifest."""

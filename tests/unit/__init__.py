"""Tests that need nothing but Python: codecs, config, timers, generated code, lint."""

"""Modules a dashboard imports with ``--app`` in the tests."""

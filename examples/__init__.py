"""Example applications built on microtrio (importable: ``python -m examples.microd``)."""

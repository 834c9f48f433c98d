"""The Flower engine's one error type, shared by the engine and its strategy (which the engine drives,
so the strategy may not import the engine: tests/test_layout.py keeps each pair one-way)."""

from fedmom_cli.errors import UserError


class FlowerClientError(UserError):
    """A client failed (or did not reply) in a Flower round."""

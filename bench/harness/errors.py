"""The one error a benchmark raises when a measurement did not do what it should."""


class BenchError(RuntimeError):
    """A measurement did not do what it should (failed cell, missing output...)."""

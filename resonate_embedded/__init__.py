"""resonate_embedded: a Sendspin/Resonate player for headless speakers."""

__version__ = "0.1.0"

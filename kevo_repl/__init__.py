"""kevo-repl: WAL replication for a key-value store over ZeroMQ."""

__all__ = ["__version__"]

__version__ = "0.1.0"

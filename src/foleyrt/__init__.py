"""foleyrt: a fast, faithful runtime for HunyuanVideo-Foley."""

__version__ = "0.1.0"

"""prefcenter: the system of record for who may be emailed about what, and the proof of it."""

__version__ = "0.1.0"

"""Notices (privacy policy, terms, wording…) and their immutable, dated versions."""

"""Eligibility: who may be emailed about a topic right now, with a reason per address."""

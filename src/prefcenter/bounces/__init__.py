"""Bounces: the deliverability suppression an ESP's hard bounce (or too many soft ones) puts
on an address. Not consent: it blocks every kind of mail, and only an admin lifts it."""

"""Topics: what a contact may be emailed about, and under which consent model."""

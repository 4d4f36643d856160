"""Links for outgoing mail: signed tokens, unsubscribe and preference URLs, List-Unsubscribe."""

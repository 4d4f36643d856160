"""The recipient's side: unsubscribe and preference pages, RFC 8058 one-click, confirmation."""

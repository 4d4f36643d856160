"""GET /metrics: the processes' own metrics and the database's state, on the app or on a
listener of its own (PREFCENTER_METRICS_LISTEN)."""

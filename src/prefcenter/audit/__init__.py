"""The audit trail: an append-only, gap-free sequence of every change and its proof."""

"""The admin console at `/admin`: signed-in staff look up contacts, record support-desk changes,
erase, browse and verify the audit trail, and download exports."""

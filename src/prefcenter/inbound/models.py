"""Owns `inbound_receipt`: the events (and Mailgun tokens) already taken in, so that one
delivered twice changes nothing the second time."""

from datetime import datetime, timedelta

from sqlmodel import Field, SQLModel

from prefcenter.db import UtcDateTime

# How long a receipt is kept: longer than any signed timestamp is accepted
# (Settings.inbound_timestamp_tolerance_s is at most 7 days), so a replay is either too old
# or found here; and longer than the ESPs retry (SendGrid 24 h, Mailgun 8 h, SNS at most a
# day or so, Postmark about 12 h).
RECEIPT_RETENTION = timedelta(days=8)


class InboundReceipt(SQLModel, table=True):
    __tablename__ = "inbound_receipt"

    # SHA-256 (hex) of `<provider>\\n<its id>`: fixed in size, whatever the ESP's id looks like,
    # and free of the address where an ESP's only id names it.
    key: str = Field(max_length=64, primary_key=True)
    provider: str = Field(max_length=16)
    received_at: datetime = Field(sa_type=UtcDateTime, index=True)

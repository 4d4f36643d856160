"""audit.schemas.new_event_ids: many ids at once, each as `new_event_id` makes one."""

from __future__ import annotations

import uuid

from prefcenter.audit.schemas import new_event_id, new_event_ids


def test_each_is_a_random_uuid_written_as_new_event_id_writes_one() -> None:
    ids = new_event_ids(2000)

    assert len(set(ids)) == 2000
    for event_id in ids:
        parsed = uuid.UUID(event_id)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == event_id
        assert len(event_id) == len(new_event_id())


def test_none_for_none() -> None:
    assert new_event_ids(0) == []

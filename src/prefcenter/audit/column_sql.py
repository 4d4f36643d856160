"""Owns the SQL in which the database checks that an audit event's columns are what its
canonical bytes say (the column check's fast path, chain_rows): each format's canonical JSON
as PostgreSQL and SQLite write it from the columns, and the columns as `columns_differ`
compares them. The SQL is the fast path, not the judge: an event it finds to differ is checked
again in Python (chain_rows.columns_differ)."""

from __future__ import annotations

from prefcenter.audit.canonical import CANONICAL_VERSION, EVENT_COLUMNS, EVENT_KEYS

# A format's canonical keys in the object's own (sorted) order: `orjson.loads` of the stored
# bytes gives its values in this order.
SORTED_KEYS = {v: [*sorted((*keys, "v"))] for v, keys in EVENT_KEYS.items()}
# Every column that holds a canonical value, in sorted order (`row_columns`).
COLUMNS = tuple(sorted(EVENT_COLUMNS))
# Where each format's values are among `COLUMNS`, and which columns must be null in it.
PICK = {v: [COLUMNS.index(k) for k in keys[:-1]] for v, keys in SORTED_KEYS.items()}
NULL = {v: [i for i, k in enumerate(COLUMNS) if k not in keys] for v, keys in SORTED_KEYS.items()}
TIMES = ("occurred_at", "recorded_at")
# The stored bytes end in `"v":N}`: which format's JSON the SQL compares them with.
_SUFFIXES = {v: b'"v":%d}' % v for v in EVENT_KEYS}


def column_sql(name: str, dialect: str) -> str:
    """A column as `columns_differ` compares it: SQLAlchemy keeps SQLite times as
    `YYYY-MM-DD HH:MM:SS.ffffff` UTC text; PostgreSQL's are datetimes, null for one that
    Python cannot hold (BC, or past 9999), which psycopg refuses to read: no time of the
    bytes is null, and the event differs."""
    if name not in TIMES:
        return f"e.{name}"
    if dialect != "postgresql":
        return f"replace(e.{name}, ' ', 'T') || 'Z'"
    return f"CASE WHEN e.{name} >= {_TIME_FROM} AND e.{name} < {_TIME_BEFORE} THEN e.{name} END"


def _by_format(json_of: dict[int, str], dialect: str) -> str:
    """The expression (`json_of`) of the format whose `"v":N}` the stored bytes end in, null
    when a column that format has no key for is not (the Python check then names the
    event)."""
    last = (
        "substr(e.canonical, -6)"
        if dialect != "postgresql"
        else "substring(e.canonical FROM octet_length(e.canonical) - 5)"
    )
    cases = []
    # The format written now first: most events are in it, and each other format asked
    # before it costs every such event a comparison.
    for version, json in sorted(json_of.items(), key=lambda item: item[0] != CANONICAL_VERSION):
        others_null = " AND ".join(f"e.{COLUMNS[i]} IS NULL" for i in NULL[version])
        suffix = _SUFFIXES[version].hex()
        literal = f"X'{suffix}'" if dialect != "postgresql" else f"'\\x{suffix}'::bytea"
        cases.append(f"WHEN {last} = {literal} AND {others_null} THEN {json}")
    return f"CASE {' '.join(cases)} END"


def _pg_json_of() -> dict[int, str]:
    """Each format's canonical bytes as PostgreSQL writes them from the columns (as text),
    every string through `to_json`."""
    json_of = {}
    for version, keys in SORTED_KEYS.items():
        parts: list[str] = []
        literal = "{"
        for name in keys[:-1]:
            literal += f'"{name}":' if literal == "{" else f',"{name}":'
            if name in TIMES:
                parts += [_pg_literal(literal + '"'), _pg_time(name)]
                literal = '"'
            elif name == "seq":
                parts += [_pg_literal(literal), "e.seq::text"]
                literal = ""
            else:
                parts += [_pg_literal(literal), f"coalesce(to_json(e.{name})::text, 'null')"]
                literal = ""
        parts.append(_pg_literal(literal + f',"v":{version}}}'))
        json_of[version] = _pg_concat(parts)
    return json_of


def pg_json_sql() -> str:
    """The canonical bytes as PostgreSQL writes them from the columns, every string through
    `to_json` (`pg_same_sql` asks it only where plain concatenation cannot tell)."""
    return _by_format(_pg_json_of(), "postgresql")


# The times Python holds (years 1 to 9999), as PostgreSQL compares them (UTC). `to_char`
# writes a year BC as the same digits as the year AD; psycopg reads neither a year BC nor one
# past 9999.
_TIME_FROM = "'0001-01-01 00:00:00+00'::timestamptz"
_TIME_BEFORE = "'10000-01-01 00:00:00+00'::timestamptz"


def _pg_time(name: str) -> str:
    """The time as `format_time` writes it; null (the event differs) for a time BC, which
    `to_char` would write as the same time AD."""
    return (
        f"CASE WHEN e.{name} >= {_TIME_FROM} THEN "
        f"""to_char(e.{name} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') END"""
    )


# Columns the table holds as NOT NULL: their quotes go into the literal around them (a null,
# were there one, makes the plain JSON null, and the event takes the `to_json` way).
_REQUIRED = frozenset(("id", "kind", "outcome", "actor", "source"))
# The length of `_pg_time`'s text, `YYYY-MM-DDTHH:MI:SS.ffffffZ`, for times before
# `_TIME_BEFORE` (later years have more digits).
_TIME_LENGTH = 27


def pg_same_sql() -> str:
    """Whether PostgreSQL finds the columns to be what the canonical bytes say (null: it
    could not tell, which the caller takes as "they differ").

    Two ways to the same answer. `_pg_json_of` escapes every string with `to_json`, some
    sixteen calls an event. Most events have no string that JSON escapes (no `"`, no `\\`,
    no control character): then `to_json(x)` is `'"' || x || '"'`, and the bytes can be
    written with plain concatenation, one `to_json` over all the strings at once telling
    whether that holds (it adds exactly the two quotes around them then, and at least one
    more character for each character it escapes). An event for which the plain way does not
    find them equal is asked the `to_json` way: the answer is the same as that way's alone
    (tests/audit/test_column_check.py), for some 30 % less of the server's CPU over 1M
    events (bench/audit_verify.py).

    The strings' length is not measured apart: where the plain bytes are the stored ones, it
    is the stored bytes' length less what the plain way writes around the strings (the
    literals, the times, the seq, two quotes or a `null` a nullable column). A time longer
    than `_TIME_LENGTH` (a year past 9999) would make them seem longer than they are, by as
    much as an escape adds: such an event takes the `to_json` way (`_TIME_BEFORE`).

    The plain bytes are the text's as the session's `client_encoding` writes them
    (`textsend`: no conversion where that is the database's, where `convert_to` checks the
    text it has made over again): the session must write UTF-8 (`_differing` says so)."""
    json_of = _pg_json_of()
    same_of = {}
    for version, keys in SORTED_KEYS.items():
        parts: list[str] = []
        literal = "{"
        strings: list[str] = []
        nullable: list[str] = []
        written = 0  # what the plain way writes beside the strings, nulls apart
        for name in keys[:-1]:
            literal += f'"{name}":' if literal == "{" else f',"{name}":'
            if name in TIMES:
                parts += [_pg_literal(literal + '"'), _pg_time(name)]
                written += len(literal) + 1 + _TIME_LENGTH
                literal = '"'
            elif name == "seq":
                parts += [_pg_literal(literal), "e.seq::text"]
                written += len(literal)
                literal = ""
            elif name in _REQUIRED:
                parts += [_pg_literal(literal + '"'), f"e.{name}"]
                written += len(literal) + 1
                literal = '"'
                strings.append(f"e.{name}")
            else:  # the literal before it goes into both ways of writing it
                quoted = _pg_literal(literal + '"')
                parts.append(
                    f"""coalesce({quoted} || e.{name} || '"', {_pg_literal(literal + "null")})"""
                )
                written += len(literal) + 2  # its quotes; a null writes two characters more
                literal = ""
                strings.append(f"coalesce(e.{name}, '')")
                nullable.append(f"e.{name}")
        literal += f',"v":{version}}}'
        parts.append(_pg_literal(literal))
        written += len(literal)
        # `to_json` of the strings adds its two quotes (and one or more characters for each
        # character it escapes) to their length.
        escapes_none = (
            f"octet_length(to_json({_pg_concat(strings)})::text) = "
            f"octet_length(e.canonical) - {written - 2} - octet_length(e.seq::text) "
            f"- 2 * num_nulls({', '.join(nullable)})"
        )
        times_fit = " AND ".join(f"e.{name} < {_TIME_BEFORE}" for name in TIMES)
        same_of[version] = (
            f"CASE WHEN textsend({_pg_concat(parts)}) = e.canonical "
            f"AND {times_fit} AND {escapes_none} "
            f"THEN true ELSE convert_to({json_of[version]}, 'UTF8') = e.canonical END"
        )
    return _by_format(same_of, "postgresql")


def _pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _pg_concat(parts: list[str]) -> str:
    """`parts` joined by `||` as a balanced tree: each `||` copies both its sides, so a
    chain copies its first parts once for every part after them, a tree once per level
    (some 10 % less of the column check's CPU)."""
    if len(parts) == 1:
        return parts[0]
    middle = len(parts) // 2
    return f"({_pg_concat(parts[:middle])} || {_pg_concat(parts[middle:])})"


def sqlite_json_sql() -> str:
    """The canonical bytes as SQLite writes them from the columns (as a blob)."""
    json_of = {}
    for version, keys in SORTED_KEYS.items():
        pairs = ", ".join(f"'{name}', {column_sql(name, 'sqlite')}" for name in keys[:-1])
        json_of[version] = f"CAST(json_object({pairs}, 'v', {version}) AS BLOB)"
    return _by_format(json_of, "sqlite")

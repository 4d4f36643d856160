"""Owns the consent ledger's write model: the one place where current state (`subscription`,
`suppression`) is read into consent.rules' terms, where a decided change becomes row values and
its audit event, and where those are written, whichever path asks (the API one by one or in a
batch, the unsubscribe lane's single statement, the preference center, the console, inbound
mail, imports) and the deep verify's replay of the events against the rows (`replay`).

- `state`: stored rows (ORM objects or driver tuples) → `CurrentState`;
- `changes`: a requested change → its decision, row values and audit event (pure);
- `orm`: one change through the session (locking path);
- `lane`: the unsubscribe lane's guarded single statement (PostgreSQL);
- `api_state`: the one read an API client's change is decided on (consent.change_lane);
- `api_lane`: that change's guarded single statement (PostgreSQL);
- `api_lane_sqlite`: that change in SQLite's write turn, everything else done before it;
- `batch`: many changes, set-based, in one transaction;
- `notices`: the notice a topic is bound to (re-consent: the version a change is given under);
- `bulk`: an import batch's set-based statements (staging, contacts, state, subscriptions);
- `bulk_events`: an import's audit events, from a template, as `changes` makes them;
- `replay`: what the events imply, compared with the rows (`audit verify --deep`).
"""

-- walhook's own state beside the slot: the dead letters.
-- `walhook setup` (and `walhook run` unless source.auto_setup = false) runs
-- this file; it is idempotent and can also be run by hand with psql.

CREATE SCHEMA IF NOT EXISTS walhook;

-- Events that could not be delivered (a permanent 4xx, or max_attempts used
-- up). A row is committed here before the slot may move past its change.
-- The payload is kept as json (not jsonb) so its exact text — key order,
-- number digits — is what a replay sends.
CREATE TABLE IF NOT EXISTS walhook.dead_letters (
    id               bigserial   PRIMARY KEY,
    subscription     text        NOT NULL,
    event_id         text        NOT NULL,
    payload          json        NOT NULL,
    last_status      integer,
    last_error       text        NOT NULL,
    attempts         integer     NOT NULL,
    first_attempt_at timestamptz NOT NULL,
    last_attempt_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subscription, event_id)
);

-- Slots walhook has streamed from. A slot listed here that no longer exists
-- has vanished (dropped, or invalidated by max_slot_wal_keep_size): `walhook
-- run` then refuses to start a new slot silently — changes since the old
-- slot's position would be skipped — and asks for `walhook setup`, which
-- creates the new slot on purpose.
CREATE TABLE IF NOT EXISTS walhook.slots (
    slot_name        text        PRIMARY KEY,
    first_streamed_at timestamptz NOT NULL DEFAULT now()
);

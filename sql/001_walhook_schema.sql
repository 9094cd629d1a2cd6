-- walhook's own state beside the slot: dead letters, backlogs, pause flags.
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
    -- The row's seal: a MAC of (subscription, event_id, payload) under a key
    -- derived from the subscription's secret, which is not in the database.
    -- `dead-letters replay` refuses a row whose seal does not match
    -- (docs/security.md, "Rows walhook reads back").
    mac              bytea,
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

-- Events of a subscription whose endpoint is down, paused or slower than the
-- stream (docs/operations.md, "When an endpoint is down"). An event's row is
-- committed here before the slot may move past its change; it is deleted
-- once delivered (2xx) or parked as a dead letter. Rows are read in commit
-- order: (commit_lsn, ordinal) is the event's place in the stream, the same
-- pair its id is made from, so an event stored twice is one row.
CREATE TABLE IF NOT EXISTS walhook.backlog (
    subscription          text        NOT NULL,
    commit_lsn            bigint      NOT NULL,
    ordinal               bigint      NOT NULL,
    event_id              text        NOT NULL,
    -- walhook's ordering-key hashes: which lane the event takes when drained.
    ordering_key          bigint      NOT NULL,
    previous_ordering_key bigint,
    barrier               boolean     NOT NULL DEFAULT false,
    -- Set for an event whose filter could not be evaluated: it becomes a
    -- dead letter at its turn instead of being sent.
    park_reason           text,
    commit_time           timestamptz NOT NULL,
    payload               json        NOT NULL,
    stored_at             timestamptz NOT NULL DEFAULT now(),
    -- The row's seal, as in walhook.dead_letters: a row whose seal does not
    -- match is parked as an unsealed dead letter instead of being sent.
    mac                   bytea,
    PRIMARY KEY (subscription, commit_lsn, ordinal)
);

-- One row per subscription an operator paused (`walhook pause`), and the
-- delivery mode the running daemon last reported for it (`walhook status`).
CREATE TABLE IF NOT EXISTS walhook.subscription_state (
    subscription text        PRIMARY KEY,
    paused       boolean     NOT NULL DEFAULT false,
    paused_at    timestamptz,
    mode         text,
    mode_since   timestamptz
);

-- Schemas made before rows were sealed gain the column (NULL in old rows).
ALTER TABLE walhook.dead_letters ADD COLUMN IF NOT EXISTS mac bytea;
ALTER TABLE walhook.backlog ADD COLUMN IF NOT EXISTS mac bytea;

-- The start of the receiver's answer to a dead letter's last attempt (at
-- most 4 KiB of its body, as text), for `walhook dead-letters show`. NULL
-- when there was no HTTP answer, and in rows parked before the column.
ALTER TABLE walhook.dead_letters ADD COLUMN IF NOT EXISTS last_response text;

-- Backfills: requests to send the rows a table already has, as READ events
-- (docs/backfills.md). `walhook backfill` adds a row per table; the running
-- daemon takes them in id order, reads each table in primary-key chunks
-- without pausing the stream, and records after each chunk the last key it
-- reached, so a restart goes on from there. `condition` is the request's
-- SQL condition (`--where`), run in read-only transactions.
CREATE TABLE IF NOT EXISTS walhook.backfills (
    id             bigserial   PRIMARY KEY,
    subscription   text        NOT NULL,
    table_name     text        NOT NULL,
    condition      text,
    chunk_rows     integer     NOT NULL DEFAULT 5000 CHECK (chunk_rows > 0),
    state          text        NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'running', 'done', 'cancelled', 'failed')),
    rows_sent      bigint      NOT NULL DEFAULT 0,
    estimated_rows bigint,
    -- The key of the last row of the last completed chunk, as text.
    last_key       text[],
    error          text,
    requested_at   timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz
);

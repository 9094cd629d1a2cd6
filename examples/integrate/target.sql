-- The second database, which the integrate receiver keeps in step.
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL
);

-- One row per webhook applied, written in the same transaction as the
-- change: a redelivery finds its id here and changes nothing.
CREATE TABLE processed_webhooks (
    webhook_id text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- The tables of examples/automate, in the application's database.
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    sku text NOT NULL,
    quantity integer NOT NULL,
    status text NOT NULL
);
-- The filter's changed(status) compares old and new values: PostgreSQL logs
-- the whole old row only with REPLICA IDENTITY FULL (docs/filters.md).
ALTER TABLE orders REPLICA IDENTITY FULL;

CREATE TABLE inventory (
    sku text PRIMARY KEY,
    stock integer NOT NULL
);

-- One row per webhook handled, written in the same transaction as the
-- stock change: a redelivery finds its id here and changes nothing.
CREATE TABLE processed_webhooks (
    webhook_id text PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- The table walhook watches for examples/notify.
CREATE TABLE signups (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email text NOT NULL,
    name text NOT NULL,
    -- Accounts the team creates to try things out: no chat message for them.
    is_test boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- The table walhook watches for examples/integrate (the application's
-- database).
CREATE TABLE orders (
    id bigint PRIMARY KEY,
    customer text NOT NULL,
    amount numeric(12, 2) NOT NULL,
    status text NOT NULL
);

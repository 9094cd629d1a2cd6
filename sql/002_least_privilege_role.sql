-- A least-privilege role for walhook, and its publication.
--
-- Run once as a superuser (or a role with CREATEROLE that owns the tables),
-- after 001_walhook_schema.sql, with psql:
--
--   cat sql/*.sql | psql -v tables='public.orders, public.signups' \
--       -v walhook_password='…' "$ADMIN_DATABASE_URL"
--
-- Then walhook runs as `walhook`: it may create its slot (REPLICATION),
-- read the published tables, and write its own state in the walhook schema;
-- nothing else. `walhook setup` and `walhook run` skip what is already here.

\set ON_ERROR_STOP on

\if :{?tables}
\else
  \echo 'sql/002_least_privilege_role.sql: set the tables to publish with -v tables=public.orders,...'
  \quit
\endif
\if :{?walhook_password}
\else
  \echo 'sql/002_least_privilege_role.sql: set the role password with -v walhook_password=...'
  \quit
\endif

SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'walhook') AS create_role \gset
\if :create_role
  CREATE ROLE walhook;
\endif
ALTER ROLE walhook WITH LOGIN REPLICATION PASSWORD :'walhook_password';

-- Its own state: dead letters, backlogs, pause flags and the slots it has
-- streamed from.
GRANT USAGE ON SCHEMA walhook TO walhook;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA walhook TO walhook;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA walhook TO walhook;

-- The tables its rules name: read, never written.
GRANT SELECT ON TABLE :tables TO walhook;

-- The publication walhook streams (source.publication = "walhook").
SELECT NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'walhook') AS create_publication \gset
\if :create_publication
  CREATE PUBLICATION walhook FOR TABLE :tables;
\endif

-- A least-privilege role for walhook, and its publication.
--
-- Run once as a superuser (or a role with CREATEROLE that owns the tables),
-- after 001_walhook_schema.sql, with psql:
--
--   cat sql/*.sql | psql -v tables='public.orders, public.signups' \
--       -v walhook_password='…' [-v publish='insert, update'] "$ADMIN_DATABASE_URL"
--
-- `publish` is what the publication sends: the operations your rules'
-- `events` name. This script cannot read your rules, so it defaults to
-- 'insert, update, delete', what a rule without `events` takes; name
-- fewer to have PostgreSQL decode and send fewer changes, or add
-- `truncate` if a rule asks for it. A publication that publishes more than
-- the rules need still works (walhook drops the rest and says so once at
-- start, with the ALTER PUBLICATION its owner may run); one that publishes
-- less stops `walhook run` with that statement, since this role may not
-- alter it (docs/operations.md, "A least-privilege role").
--
-- Then walhook runs as `walhook`: it may create its slot (REPLICATION),
-- read the published tables, and write its own state in the walhook schema.
-- `walhook setup` and `walhook run` skip what is already here.
--
-- What REPLICATION also allows: a replication role can create a logical
-- slot with any output plugin (test_decoding included) and so read every
-- change of every table in the database, whatever its table grants say;
-- and where pg_hba.conf allows it physical replication too (pg_basebackup,
-- a copy of the whole cluster). Limit it in pg_hba.conf to logical
-- replication of the one database (docs/operations.md, "A least-privilege
-- role"):
--   hostssl  app          walhook  10.0.0.5/32  scram-sha-256
--   (no line for walhook with database "replication")

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
\if :{?publish}
\else
  \set publish 'insert, update, delete'
\endif
SELECT :'publish' ~* '^\s*(insert|update|delete|truncate)(\s*,\s*(insert|update|delete|truncate))*\s*$'
       AS publish_known \gset
\if :publish_known
\else
  \echo 'sql/002_least_privilege_role.sql: -v publish must list operations among insert, update, delete, truncate, comma-separated'
  DO $$ BEGIN RAISE EXCEPTION 'unknown operation in -v publish'; END $$;
\endif

-- Each entry of :tables must name an existing table; the list is rebuilt
-- from the catalog (quoted as PostgreSQL quotes names), so nothing of the
-- text given is pasted into a statement.
WITH entries AS (
    SELECT position, trim(entry) AS entry
    FROM unnest(string_to_array(:'tables', ',')) WITH ORDINALITY AS t(entry, position)
), resolved AS (
    -- Only a well-formed name is looked up (to_regclass fails on others).
    SELECT position,
           CASE WHEN entry ~ '^("[^"]+"|[A-Za-z_][A-Za-z0-9_$]*)(\.("[^"]+"|[A-Za-z_][A-Za-z0-9_$]*))?$'
                THEN to_regclass(entry) END AS relation
    FROM entries
)
SELECT count(*) FILTER (WHERE relation IS NULL) = 0 AS tables_known,
       string_agg(relation::text, ', ' ORDER BY position) AS quoted_tables
FROM resolved \gset
\if :tables_known
\else
  \echo 'sql/002_least_privilege_role.sql: every entry of -v tables must name an existing table (schema.table, comma-separated)'
  DO $$ BEGIN RAISE EXCEPTION 'unknown table in -v tables'; END $$;
\endif

-- The role: it may log in and replicate, nothing more. Its password is set
-- when the role is created, never reset by a second run (run ALTER ROLE
-- yourself to change it), and kept out of the server log where this
-- session may say so (superuser).
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'walhook') AS create_role,
       current_setting('is_superuser') = 'on' AS superuser \gset
\if :create_role
  \if :superuser
    SET log_statement = 'none';
    SET log_min_duration_statement = -1;
  \endif
  CREATE ROLE walhook WITH LOGIN PASSWORD :'walhook_password';
  \if :superuser
    RESET log_statement;
    RESET log_min_duration_statement;
  \endif
\endif
ALTER ROLE walhook WITH LOGIN REPLICATION NOSUPERUSER NOCREATEDB NOCREATEROLE NOBYPASSRLS;

-- Its own state: dead letters, backlogs, pause flags and the slots it has
-- streamed from.
GRANT USAGE ON SCHEMA walhook TO walhook;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA walhook TO walhook;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA walhook TO walhook;

-- The tables its rules name: read, never written.
GRANT SELECT ON TABLE :quoted_tables TO walhook;

-- The publication walhook streams (source.publication = "walhook"), with
-- the options `walhook setup` gives its own: the operations of `publish`,
-- and a partitioned table's changes under its own name. An existing one is
-- left as it is.
SELECT NOT EXISTS (SELECT FROM pg_publication WHERE pubname = 'walhook') AS create_publication \gset
\if :create_publication
  CREATE PUBLICATION walhook FOR TABLE :quoted_tables
      WITH (publish = :'publish', publish_via_partition_root = true);
\endif

-- Schema version 2 of the SQLite store: the SQL of migrations 1 and 2 as they
-- shipped (re-indented). Frozen here so the upgrade test builds a real
-- version-2 file whatever later migrations do; never edit it.
CREATE TABLE IF NOT EXISTS domains (
    name        TEXT PRIMARY KEY NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS accounts (
    address        TEXT PRIMARY KEY NOT NULL,
    password_hash  TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'active'
                   CHECK (status IN ('active', 'disabled')),
    plan           TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS accounts_by_domain
    ON accounts (substr(address, instr(address, '@') + 1));

CREATE TABLE IF NOT EXISTS queue_messages (
    id           TEXT PRIMARY KEY NOT NULL,
    sender       TEXT NOT NULL,
    size         INTEGER NOT NULL CHECK (size >= 0),
    spool_path   TEXT NOT NULL,
    auth_user    TEXT,
    client_ip    TEXT NOT NULL,
    received_at  INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS queue_messages_by_age
    ON queue_messages (received_at);

CREATE TABLE IF NOT EXISTS queue_recipients (
    message_id  TEXT NOT NULL
                REFERENCES queue_messages (id) ON DELETE CASCADE,
    position    INTEGER NOT NULL,
    address     TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'queued',
    PRIMARY KEY (message_id, position)
);

CREATE TABLE IF NOT EXISTS usage_events (
    account  TEXT NOT NULL,
    at_ms    INTEGER NOT NULL
);

CREATE INDEX IF NOT EXISTS usage_events_by_account
    ON usage_events (account, at_ms);

CREATE INDEX IF NOT EXISTS usage_events_by_time
    ON usage_events (at_ms);

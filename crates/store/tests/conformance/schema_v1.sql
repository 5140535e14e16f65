-- Schema version 1 of the SQLite store: the SQL of migration 1 as it shipped
-- (commit d8e408b, re-indented). Frozen here so the upgrade test builds a real
-- version-1 file whatever later migrations do; never edit it.
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

-- oh-host PostgreSQL stores: settings, secrets, conversations and their events.
-- Append-only: never edit a migration that has shipped; add a new file.
-- Single-user deployments (no user id) use user_id = ''.

CREATE TABLE user_settings (
    user_id        TEXT PRIMARY KEY,
    -- The Settings document without its secret fields.
    settings       JSONB NOT NULL,
    -- llm_api_key, search_api_key, sandbox_api_key as one sealed JSON object (or NULL).
    sealed_secrets TEXT,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE user_secrets (
    user_id    TEXT PRIMARY KEY,
    -- The whole Secrets document (provider tokens and custom secrets), sealed.
    sealed     TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE conversation_metadata (
    conversation_id TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL,
    metadata        JSONB NOT NULL
);
CREATE INDEX conversation_metadata_by_user
    ON conversation_metadata (user_id, created_at DESC, conversation_id DESC);

CREATE TABLE conversation_events (
    conversation_id TEXT NOT NULL REFERENCES conversation_metadata (conversation_id) ON DELETE CASCADE,
    id              BIGINT NOT NULL,
    event           JSONB NOT NULL,
    PRIMARY KEY (conversation_id, id)
);

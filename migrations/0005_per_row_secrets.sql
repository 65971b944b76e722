-- Several hosts write one user's settings and secrets without losing each other's changes:
-- settings carry a version checked on write; secrets move to one row per secret and per
-- provider token, so a change touches only its row. Rows of the old one-document table
-- (user_secrets) are split into these on the next change or by `oh-host migrate` (which holds
-- the keys needed to decrypt them).

ALTER TABLE user_settings ADD COLUMN version BIGINT NOT NULL DEFAULT 1;

CREATE TABLE user_custom_secrets (
    user_id     TEXT NOT NULL,
    name        TEXT NOT NULL,
    -- The value, sealed and bound to (user, name).
    sealed      TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, name)
);

CREATE TABLE user_provider_tokens (
    user_id          TEXT NOT NULL,
    provider         TEXT NOT NULL,
    -- The token, sealed and bound to (user, provider); NULL for an entry with a user id only.
    sealed_token     TEXT,
    host             TEXT,
    provider_user_id TEXT,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, provider)
);

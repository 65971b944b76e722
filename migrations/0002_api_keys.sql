-- API keys of saas_auth: only a SHA-256 of each key is stored; the key is shown once.
CREATE TABLE api_keys (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    name         TEXT NOT NULL,
    key_sha256   TEXT NOT NULL UNIQUE,
    -- The first characters of the key, to tell keys apart in a list.
    prefix       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at   TIMESTAMPTZ,
    last_used_at TIMESTAMPTZ,
    revoked_at   TIMESTAMPTZ
);
CREATE INDEX api_keys_by_user ON api_keys (user_id, created_at DESC);

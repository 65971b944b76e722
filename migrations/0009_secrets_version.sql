-- A version per user's secrets, bumped by every change in the change's transaction, so a host
-- can keep a user's decrypted secrets and check them with one cheap query (settings have
-- user_settings.version already). A user with no row has version 0: never cached.
CREATE TABLE user_secrets_versions (
    user_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

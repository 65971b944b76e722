-- A version per user's secrets, so a host can keep a user's decrypted secrets and check them
-- with one cheap query (settings have user_settings.version already). Every change to the
-- secrets tables bumps it, through triggers, whoever writes (an older host during a rolling
-- upgrade included); the stores also bump it first in each change's transaction, which
-- queues one user's changes on that row. A user with no row has no secrets (version 0).
CREATE TABLE user_secrets_versions (
    user_id TEXT PRIMARY KEY,
    version BIGINT NOT NULL
);

INSERT INTO user_secrets_versions (user_id, version)
SELECT user_id, 1 FROM (
    SELECT user_id FROM user_secrets
    UNION SELECT user_id FROM user_custom_secrets
    UNION SELECT user_id FROM user_provider_tokens
) AS users;

CREATE FUNCTION oh_bump_secrets_version() RETURNS trigger AS $$
DECLARE
    uid TEXT;
BEGIN
    IF TG_OP = 'DELETE' THEN
        uid := OLD.user_id;
    ELSE
        uid := NEW.user_id;
    END IF;
    INSERT INTO user_secrets_versions (user_id, version) VALUES (uid, 1)
    ON CONFLICT (user_id) DO UPDATE SET version = user_secrets_versions.version + 1;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER user_secrets_version AFTER INSERT OR UPDATE OR DELETE ON user_secrets
    FOR EACH ROW EXECUTE FUNCTION oh_bump_secrets_version();
CREATE TRIGGER user_custom_secrets_version AFTER INSERT OR UPDATE OR DELETE ON user_custom_secrets
    FOR EACH ROW EXECUTE FUNCTION oh_bump_secrets_version();
CREATE TRIGGER user_provider_tokens_version AFTER INSERT OR UPDATE OR DELETE ON user_provider_tokens
    FOR EACH ROW EXECUTE FUNCTION oh_bump_secrets_version();

-- Settings: any update grows the version too (hosts already bump it; this covers edits made
-- outside the stores), so a cached copy is never served after a change.
CREATE FUNCTION oh_bump_settings_version() RETURNS trigger AS $$
BEGIN
    NEW.version := GREATEST(NEW.version, OLD.version + 1);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;

CREATE TRIGGER user_settings_version BEFORE UPDATE ON user_settings
    FOR EACH ROW EXECUTE FUNCTION oh_bump_settings_version();

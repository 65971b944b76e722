-- Git provider tokens brokered through Keycloak (saas_auth), sealed per user.
CREATE TABLE auth_tokens (
    user_id            TEXT NOT NULL,
    idp                TEXT NOT NULL,
    access_sealed      TEXT NOT NULL,
    refresh_sealed     TEXT,
    access_expires_at  TIMESTAMPTZ,
    refresh_expires_at TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idp)
);

-- Terms of service acceptance, per user (saas_auth: POST /api/accept_tos).
CREATE TABLE user_tos (
    user_id     TEXT PRIMARY KEY,
    accepted_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

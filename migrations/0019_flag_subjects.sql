-- Who feature flags were evaluated for (saas_monitoring): the email last seen, and the first
-- time this deployment saw the user, which `signed_up_after`/`signed_up_before` rules read
-- and which never moves.
CREATE TABLE flag_subjects (
    user_id    TEXT PRIMARY KEY,
    email      TEXT,
    first_seen TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Slack workspaces (teams) that installed the app through OAuth v2 (the integrations plugin):
-- each team's bot token, sealed with the deployment's master key, so a reply in a team's
-- channel goes out with that team's own token.
CREATE TABLE slack_teams (
    team_id      TEXT PRIMARY KEY,
    team_name    TEXT NOT NULL DEFAULT '',
    bot_token    TEXT NOT NULL,            -- sealed (pg_common::crypto)
    bot_user_id  TEXT,
    installed_by TEXT NOT NULL,            -- the OpenHands user who installed it
    installed_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The installation's OAuth state, beside the others.
ALTER TABLE integration_oauth_states DROP CONSTRAINT integration_oauth_states_operation_check;
ALTER TABLE integration_oauth_states ADD CONSTRAINT integration_oauth_states_operation_check
    CHECK (operation IN ('workspace_integration', 'workspace_link', 'slack_link', 'slack_install'));

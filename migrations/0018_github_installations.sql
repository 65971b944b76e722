-- GitHub App installations made through this server's install link (the integrations
-- plugin): which account the App was installed on, and which OpenHands user installed it.
CREATE TABLE github_installations (
    installation_id BIGINT PRIMARY KEY,
    account_login   TEXT NOT NULL,
    account_type    TEXT NOT NULL,          -- User, Organization
    user_id         TEXT NOT NULL,
    installed_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX github_installations_by_user ON github_installations (user_id);

ALTER TABLE integration_oauth_states DROP CONSTRAINT integration_oauth_states_operation_check;
ALTER TABLE integration_oauth_states ADD CONSTRAINT integration_oauth_states_operation_check
    CHECK (operation IN ('workspace_integration', 'workspace_link', 'slack_link', 'slack_install', 'github_install'));

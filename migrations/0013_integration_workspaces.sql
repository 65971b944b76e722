-- Jira, Jira DC and Linear workspaces (OpenHands' jira_workspaces, jira_dc_workspaces,
-- linear_workspaces): registered by an admin who proved membership through the provider's
-- OAuth; their webhook secret and service account key are sealed (pg_common::crypto, bound
-- to 'integration_workspaces/<column>/<provider>:<name>').
CREATE TABLE integration_workspaces (
    id              BIGSERIAL PRIMARY KEY,
    provider        TEXT NOT NULL CHECK (provider IN ('jira', 'jira_dc', 'linear')),
    name            TEXT NOT NULL,                 -- Jira: the site's host; Linear: the organization's urlKey
    external_id     TEXT NOT NULL DEFAULT '',      -- Jira Cloud: the cloud id; Linear: the organization id
    admin_user_id   TEXT NOT NULL,
    webhook_secret  TEXT NOT NULL,                 -- sealed
    svc_acc_email   TEXT NOT NULL DEFAULT '',
    svc_acc_api_key TEXT NOT NULL,                 -- sealed
    status          TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (provider, name)
);
CREATE INDEX integration_workspaces_external ON integration_workspaces (provider, external_id);

-- Users linked to a workspace (OpenHands' jira_users, ...): their identity there, proven by
-- the provider's OAuth. One active workspace per user and provider.
CREATE TABLE integration_workspace_users (
    id               BIGSERIAL PRIMARY KEY,
    provider         TEXT NOT NULL,
    user_id          TEXT NOT NULL,
    workspace_id     BIGINT NOT NULL REFERENCES integration_workspaces (id) ON DELETE CASCADE,
    external_user_id TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('active', 'inactive')),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (user_id, workspace_id)
);
CREATE UNIQUE INDEX integration_workspace_users_one_active ON integration_workspace_users (provider, user_id) WHERE status = 'active';
CREATE INDEX integration_workspace_users_by_identity ON integration_workspace_users (workspace_id, external_user_id);

-- An OAuth under way (a workspace registered or linked, a Slack identity linked): its `state` (stored hashed, used once, ten minutes) and what
-- the user asked for; a new workspace's secrets sealed until the callback stores them.
CREATE TABLE integration_oauth_states (
    state_sha256   TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    provider       TEXT NOT NULL,
    operation      TEXT NOT NULL CHECK (operation IN ('workspace_integration', 'workspace_link', 'slack_link')),
    workspace_name TEXT NOT NULL,
    details        TEXT,                           -- sealed JSON
    expires_at     TIMESTAMPTZ NOT NULL
);

-- GitLab webhooks a user installed on a project (OpenHands' gitlab_webhook): each has its own
-- secret token (sealed, bound to 'gitlab_webhooks/webhook_secret/<id>'), and GitLab sends
-- the row's id back in the X-OpenHands-Webhook-Id header so a delivery finds its secret.
CREATE TABLE gitlab_webhooks (
    id             TEXT PRIMARY KEY,
    user_id        TEXT NOT NULL,
    project_id     BIGINT NOT NULL UNIQUE,
    project_path   TEXT NOT NULL,
    hook_id        BIGINT,                          -- GitLab's, once installed
    webhook_secret TEXT NOT NULL,                   -- sealed
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX gitlab_webhooks_by_user ON gitlab_webhooks (user_id);

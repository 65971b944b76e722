-- Each user's GitLab projects (saas_auth's repository sync): what the repository picker and
-- search serve, refreshed at sign-in and when older than the sync interval.
CREATE TABLE gitlab_projects (
    user_id          TEXT NOT NULL,
    project_id       BIGINT NOT NULL,
    path             TEXT NOT NULL,
    is_public        BOOLEAN NOT NULL,
    star_count       BIGINT,
    last_activity_at TEXT,
    created_at       TEXT,
    default_branch   TEXT,
    group_owned      BOOLEAN NOT NULL,
    synced_at        TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (user_id, project_id)
);
CREATE INDEX gitlab_projects_by_activity ON gitlab_projects (user_id, last_activity_at DESC);

-- One row per user: when their projects were last synced, a sync under way, the last error.
CREATE TABLE gitlab_syncs (
    user_id    TEXT PRIMARY KEY,
    synced_at  TIMESTAMPTZ,
    started_at TIMESTAMPTZ,
    projects   INTEGER NOT NULL DEFAULT 0,
    error      TEXT
);

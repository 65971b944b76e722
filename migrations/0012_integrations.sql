-- Webhook deliveries from the integrations (GitHub, GitLab, Slack, Jira, Jira DC, Linear):
-- stored once verified, before the provider gets its 2xx, and processed from here.
CREATE TABLE webhook_deliveries (
    id              BIGSERIAL PRIMARY KEY,
    source          TEXT NOT NULL,
    delivery_id     TEXT NOT NULL,                 -- the provider's (X-GitHub-Delivery, ...)
    event           TEXT NOT NULL,                 -- its event type
    payload         JSONB NOT NULL,
    status          TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processing', 'done', 'dead')),
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until    TIMESTAMPTZ,                   -- a worker's claim; past it, another may take it
    last_error      TEXT,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at     TIMESTAMPTZ,
    UNIQUE (source, delivery_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status IN ('pending', 'processing');
CREATE INDEX webhook_deliveries_dead ON webhook_deliveries (id) WHERE status = 'dead';

-- Every delivery and decision: received, refused (and why), processed, retried,
-- dead-lettered, replayed. Never a secret or a signature.
CREATE TABLE audit_log (
    id          BIGSERIAL PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    source      TEXT NOT NULL,
    delivery_id TEXT,
    action      TEXT NOT NULL,
    detail      JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_by_delivery ON audit_log (source, delivery_id);

-- Which oh-host user an identity at a provider is (a GitHub login, a Slack user id, ...).
CREATE TABLE integration_links (
    provider    TEXT NOT NULL,
    external_id TEXT NOT NULL,
    user_id     TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, external_id)
);

-- One-time codes a signed-in user gets to link an identity: they comment "@openhands link
-- CODE" from that identity, so the provider's signed delivery proves it is theirs. Stored
-- hashed (SHA-256); valid ten minutes.
CREATE TABLE integration_link_codes (
    code_sha256 TEXT PRIMARY KEY,
    user_id     TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

-- Unlinked identities told once how to link.
CREATE TABLE integration_notices (
    provider    TEXT NOT NULL,
    external_id TEXT NOT NULL,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, external_id)
);

-- A conversation started by a delivery, and where its answer goes back (OpenHands'
-- conversation_callbacks): kept until the answer is posted, so restarts lose none.
CREATE TABLE conversation_callbacks (
    conversation_id TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL,
    source          TEXT NOT NULL,
    target          JSONB NOT NULL,
    status          TEXT NOT NULL DEFAULT 'waiting' CHECK (status IN ('waiting', 'posted', 'failed')),
    attempts        INT NOT NULL DEFAULT 0,
    next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_error      TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX conversation_callbacks_due ON conversation_callbacks (next_attempt_at) WHERE status = 'waiting';

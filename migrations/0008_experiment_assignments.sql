-- Which variant of each A/B experiment a conversation ran with (saas_monitoring).
CREATE TABLE experiment_assignments (
    conversation_id TEXT NOT NULL,
    experiment      TEXT NOT NULL,
    variant         TEXT NOT NULL,
    user_id         TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (conversation_id, experiment)
);
CREATE INDEX experiment_assignments_by_experiment ON experiment_assignments (experiment, variant);

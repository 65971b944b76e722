-- Users' ratings of a conversation or of one of its events (OpenHands' conversation_feedback),
-- written by SaasFeedbackRoutes. Several ratings of one event may exist; the latest counts.
CREATE TABLE conversation_feedback (
    id              BIGSERIAL PRIMARY KEY,
    user_id         TEXT NOT NULL,
    conversation_id TEXT NOT NULL REFERENCES conversation_metadata (conversation_id) ON DELETE CASCADE,
    event_id        BIGINT,
    rating          SMALLINT NOT NULL CHECK (rating BETWEEN 1 AND 5),
    reason          TEXT,
    metadata        JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX conversation_feedback_by_event ON conversation_feedback (conversation_id, event_id, id DESC);

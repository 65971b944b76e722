-- The highest fencing token that has appended to each conversation: a clustered manager's
-- owner appends with its token, and an append with a lower one (a paused former owner) is
-- refused (ConversationStore::append_events_fenced, plugin-api 0.4).
ALTER TABLE conversation_metadata ADD COLUMN fence BIGINT NOT NULL DEFAULT 0;

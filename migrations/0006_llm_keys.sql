-- Each user's own key at the deployment's LLM proxy (LiteLLM), for "bring your own runtime"
-- (saas_auth: GET /api/keys/llm/byor), sealed per user.
CREATE TABLE llm_keys (
    user_id    TEXT PRIMARY KEY,
    key_sealed TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

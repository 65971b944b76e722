-- Credits bought through Stripe Checkout and spent on LLM usage (the billing plugin).
-- Amounts are exact decimals in US dollars (one credit = one dollar, as in OpenHands).

-- Each user's Stripe customer, created once.
CREATE TABLE stripe_customers (
    user_id            TEXT PRIMARY KEY,
    stripe_customer_id TEXT NOT NULL UNIQUE,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Each Checkout Session this server created: whose it is and what it buys.
CREATE TABLE billing_sessions (
    id         TEXT PRIMARY KEY,               -- Stripe's cs_... id
    user_id    TEXT NOT NULL,
    status     TEXT NOT NULL,                  -- in_progress, completed, cancelled
    price      NUMERIC(19, 4) NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX billing_sessions_by_user ON billing_sessions (user_id);

-- The ledger: append-only. `reference` makes every entry idempotent: a purchase is
-- `checkout:<session id>`, a usage debit `usage:<conversation id>:<event id>`.
CREATE TABLE credit_ledger (
    id         BIGSERIAL PRIMARY KEY,
    user_id    TEXT NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('purchase', 'usage', 'adjustment')),
    amount     NUMERIC(19, 6) NOT NULL,         -- positive credits, negative debits
    reference  TEXT NOT NULL UNIQUE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX credit_ledger_by_user ON credit_ledger (user_id, id);

-- The sum of each user's ledger, kept by the same transaction that appends to it, so a
-- balance is one row read however long the ledger grows.
CREATE TABLE credit_balances (
    user_id    TEXT PRIMARY KEY,
    balance    NUMERIC(19, 6) NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Stripe events handled (webhooks are delivered at least once, in any order).
CREATE TABLE stripe_events (
    id          TEXT PRIMARY KEY,              -- evt_...
    type        TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

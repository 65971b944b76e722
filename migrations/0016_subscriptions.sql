-- Subscriptions through Stripe Checkout in subscription mode (the billing plugin), as
-- OpenHands' subscription_access: who has access, from when to when, and whether they
-- cancelled (access lasts to the end of the paid period).

-- What a Checkout Session buys: credits (a payment) or a subscription.
ALTER TABLE billing_sessions ADD COLUMN kind TEXT NOT NULL DEFAULT 'credits'
    CHECK (kind IN ('credits', 'subscription'));

CREATE TABLE subscription_access (
    id                     BIGSERIAL PRIMARY KEY,
    user_id                TEXT NOT NULL,
    status                 TEXT NOT NULL CHECK (status IN ('ACTIVE', 'ENDED')),
    start_at               TIMESTAMPTZ NOT NULL,
    end_at                 TIMESTAMPTZ NOT NULL,
    amount_paid            NUMERIC(19, 4),
    stripe_subscription_id TEXT NOT NULL UNIQUE,
    checkout_session_id    TEXT UNIQUE REFERENCES billing_sessions (id),
    cancelled_at           TIMESTAMPTZ,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX subscription_access_by_user ON subscription_access (user_id, end_at);

-- When the success return last asked Stripe about a session: the return is public (Stripe
-- sends the buyer there), so Stripe is asked only for this server's own unfinished sessions,
-- and at most once every few seconds each.
ALTER TABLE billing_sessions ADD COLUMN checked_at TIMESTAMPTZ;

-- A delivery's body, hashed: a provider's delivery id is not covered by its signature, so a
-- captured signed body sent again under new ids is recognised by its content and stored
-- (and acted on) once.
ALTER TABLE webhook_deliveries ADD COLUMN content_sha256 TEXT;
CREATE UNIQUE INDEX webhook_deliveries_content ON webhook_deliveries (source, content_sha256)
    WHERE content_sha256 IS NOT NULL;

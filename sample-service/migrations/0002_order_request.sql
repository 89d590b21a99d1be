-- What the idempotency back-stop needs when a key's record is gone (retention passed,
-- Redis lost it): the first request's fingerprint, to refuse another body under the
-- same key with 422, and its answer, to replay it as given rather than rebuilt from
-- the retry (whose items and today's prices may differ).
ALTER TABLE orders ADD COLUMN request_fingerprint text, ADD COLUMN response jsonb;

-- Outbox rows the relay gave up on: undecodable ones, and those the broker kept
-- refusing (unroutable, nacked) for the attempt cap. Kept whole, with why, for an
-- operator; the rest of the outbox flows past them.
CREATE TABLE outbox_parked (
    id        uuid PRIMARY KEY,
    row       jsonb NOT NULL,
    reason    text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);

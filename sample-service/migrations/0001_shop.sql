-- The shop's data: catalog, orders, the transactional outbox and the consumers' side effects.

CREATE TABLE categories (
    id   bigint PRIMARY KEY,
    name text NOT NULL UNIQUE
);

CREATE TABLE products (
    id          bigserial PRIMARY KEY,
    category_id bigint NOT NULL REFERENCES categories (id),
    name        text NOT NULL,
    price_cents bigint NOT NULL CHECK (price_cents >= 0),
    stock       integer NOT NULL CHECK (stock >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE orders (
    id              uuid PRIMARY KEY,
    tenant          text NOT NULL,
    idempotency_key text NOT NULL,
    status          text NOT NULL,
    items           jsonb NOT NULL,
    total_cents     bigint NOT NULL,
    email           text NOT NULL,
    phone           text NOT NULL,
    payment_method  text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- The back-stop behind the Redis idempotency records: one order per key and tenant,
    -- even when a key's record expired or Redis lost it.
    UNIQUE (tenant, idempotency_key)
);

-- Written in the same transaction as the order; the relay publishes what is unpublished.
CREATE TABLE outbox (
    id           uuid PRIMARY KEY,          -- also the AMQP message_id and the consumers' dedup key
    aggregate    text NOT NULL,
    aggregate_id uuid NOT NULL,
    event_type   text NOT NULL,
    payload      jsonb NOT NULL,
    headers      jsonb NOT NULL,            -- traceparent/tracestate captured at write time
    created_at   timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    attempts     integer NOT NULL DEFAULT 0,
    last_error   text,
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (available_at) WHERE published_at IS NULL;

-- A consumer's record of the messages whose side effects it committed.
CREATE TABLE processed_messages (
    consumer     text NOT NULL,
    message_id   uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, message_id)
);

CREATE TABLE payments (
    id          bigserial PRIMARY KEY,
    order_id    uuid NOT NULL REFERENCES orders (id),
    amount_cents bigint NOT NULL,
    message_id  uuid NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE notifications (
    id         bigserial PRIMARY KEY,
    order_id   uuid NOT NULL REFERENCES orders (id),
    channel    text NOT NULL,
    recipient  text NOT NULL,
    message_id uuid NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dead_letters (
    message_id uuid PRIMARY KEY,
    queue      text NOT NULL,
    order_id   uuid,
    attempts   integer NOT NULL,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Demo catalog: 8 categories, 200 products.
INSERT INTO categories (id, name)
SELECT g, (ARRAY['books','music','garden','kitchen','toys','tools','games','sports'])[g]
FROM generate_series(1, 8) AS g;

INSERT INTO products (category_id, name, price_cents, stock)
SELECT 1 + (g % 8), 'product ' || g, 100 + (g * 37) % 9900, 1000
FROM generate_series(1, 200) AS g;

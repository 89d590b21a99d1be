#!/bin/sh
# Builds the sample service's backend URLs from the compose secrets, so no
# password appears in docker-compose.yml or the environment it declares.
# Passwords are used as they are in the URLs: keep them URL-safe.
set -eu
secret() { tr -d '\r\n' < "/run/secrets/$1"; }
export DATABASE_URL="postgres://shop:$(secret postgres_password)@${POSTGRES_HOST:-postgres}:5432/shop"
export AMQP_URL="amqp://shop:$(secret rabbitmq_password)@${RABBITMQ_HOST:-rabbitmq}:5672/%2f"
export REDIS_URL="redis://:$(secret redis_password)@${REDIS_HOST:-redis}:6379/"
exec "$@"

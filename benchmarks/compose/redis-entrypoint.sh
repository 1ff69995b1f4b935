#!/bin/sh
# The compose file's command, `redis-server --appendonly yes`, with protected mode off as the
# official image has it: with no configuration file Redis would refuse every client from another
# container, and the compose network is the only way in.
set -eu
if [ "${1:-}" = redis-server ]; then
    shift
    exec redis-server --protected-mode no "$@"
fi
exec "$@"

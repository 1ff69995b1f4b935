#!/usr/bin/env bash
# Run docker-compose.yml for real, once, with Debian's podman and podman-compose: no Docker
# engine and no image registry here. It makes a Debian bookworm base image with debootstrap,
# builds the moodwatch image on it (Dockerfile, BASE build argument) and Redis and PostgreSQL
# images from Debian's packages (benchmarks/compose/), starts the stack with WORKERS classify
# workers (no inbox, no models: MOODWATCH_TRANSPORT=broker, MOODWATCH_MODEL_SOURCE=database),
# drops PHOTOS generated photos into the watcher's inbox, waits for their rows in PostgreSQL and
# their moves, prints what it saw, and takes the stack down (volumes too).
#
#   apt-get install -y podman podman-compose debootstrap    # once, as root
#   benchmarks/compose_run.sh                               # WORKERS=2 PHOTOS=200
#
# Idempotent: the base image and the images are reused when present (podman's layer cache makes
# a rebuild with unchanged sources take seconds); a stack left by an interrupted run is taken
# down first. Bounded: each wait has a deadline (TIMEOUT_SECONDS), builds have their own.
# Traffic stays on this machine but for debootstrap's, apt's and pip's downloads in the builds.
# Exit status: 0 when every photo has a classified row and has left the inbox; 1 otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HERE=$ROOT/benchmarks/compose
WORK=${MOODWATCH_COMPOSE_WORK:-/var/tmp/moodwatch-compose}
export WORKERS=${WORKERS:-2}
PHOTOS=${PHOTOS:-200}
TIMEOUT_SECONDS=${TIMEOUT_SECONDS:-600}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-2400}
PROJECT=mwcompose
BASE_IMAGE=localhost/moodwatch-base:bookworm
# podman's settings: this machine refuses the default rlimits (default_ulimits = []).
export CONTAINERS_CONF=$HERE/containers.conf
# docker-compose.yml passes it to the Dockerfile as BASE.
export MOODWATCH_BASE_IMAGE=$BASE_IMAGE
# Fresh secrets each run: the volumes are fresh too (PostgreSQL keeps the first password).
POSTGRES_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
MOODWATCH_WEB_TOKEN=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
export POSTGRES_PASSWORD MOODWATCH_WEB_TOKEN

say() { printf '[compose_run %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { say "error: $*"; exit 1; }
compose() {
    podman-compose -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$HERE/podman-override.yml" "$@"
}
container() { echo "${PROJECT}_$1_${2:-1}"; }
psql_q() { podman exec "$(container postgres)" psql -U moodwatch -d moodwatch -Atc "$1"; }

for tool in podman podman-compose debootstrap python3; do
    command -v "$tool" > /dev/null || die "$tool is not installed (apt-get install -y podman podman-compose debootstrap)"
done
mkdir -p "$WORK"

base_image() {
    if podman image exists "$BASE_IMAGE"; then
        say "base image $BASE_IMAGE is there"
        return
    fi
    say "base image: debootstrap bookworm (python3, python3-venv, python3-pip)"
    rm -rf "$WORK/rootfs"
    timeout "$BUILD_TIMEOUT" debootstrap --variant=minbase \
        --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$WORK/rootfs" \
        http://deb.debian.org/debian > "$WORK/debootstrap.log" 2>&1 \
        || die "debootstrap failed: see $WORK/debootstrap.log"
    # The builds trust what this machine trusts (its egress may re-sign TLS with its own CA).
    cp /etc/ssl/certs/ca-certificates.crt "$WORK/rootfs/etc/ssl/certs/ca-certificates.crt"
    rm -rf "$WORK/rootfs/var/cache/apt/archives"/*.deb "$WORK/rootfs/var/lib/apt/lists"/*
    tar -C "$WORK/rootfs" -c . | podman import \
        --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
        --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
        --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" > /dev/null
    rm -rf "$WORK/rootfs"
}

build_images() {
    local started=$SECONDS
    say "building moodwatch:latest from $BASE_IMAGE (log: $WORK/build.log)"
    timeout "$BUILD_TIMEOUT" podman build --build-arg "BASE=$BASE_IMAGE" -t moodwatch:latest \
        -f "$ROOT/Dockerfile" "$ROOT" > "$WORK/build.log" 2>&1 || die "the image build failed: see $WORK/build.log"
    for service in redis postgres; do
        timeout "$BUILD_TIMEOUT" podman build --build-arg "BASE=$BASE_IMAGE" \
            -t "localhost/moodwatch-$service:bookworm" -f "$HERE/$service.Containerfile" "$HERE" \
            >> "$WORK/build.log" 2>&1 || die "the $service image build failed: see $WORK/build.log"
    done
    # The images the tags pointed at before (2.4 GB each): reruns do not fill the disk.
    podman image prune -f > /dev/null
    say "images built in $((SECONDS - started)) s"
}

# Wait until a command succeeds, or give up at the deadline.
wait_for() {
    local what=$1 deadline=$((SECONDS + TIMEOUT_SECONDS))
    shift
    until "$@" > /dev/null 2>&1; do
        ((SECONDS < deadline)) || die "gave up after ${TIMEOUT_SECONDS} s waiting for $what"
        sleep 2
    done
}

# A one-shot service (migrate, publish): podman-compose 1.0.3 does not honour depends_on's
# conditions, so the script starts the stack in the order the conditions describe.
run_once() {
    compose up -d --no-build "$1" > "$WORK/up-$1.log" 2>&1
    local code
    code=$(timeout "$TIMEOUT_SECONDS" podman wait "$(container "$1")") || die "$1 did not finish"
    [[ $code == 0 ]] || { podman logs "$(container "$1")" | tail -20; die "$1 exited with $code"; }
    say "$1: done"
}

down() {
    compose down -v > "$WORK/down.log" 2>&1 || true
    # podman-compose 1.0.3's down leaves the project's volumes and network behind.
    podman volume ls -q | grep "^${PROJECT}_" | xargs -r podman volume rm -f > /dev/null 2>&1 || true
    podman network ls -q | grep "^${PROJECT}_" | xargs -r podman network rm -f > /dev/null 2>&1 || true
}

# The photos: generated in the watcher's container (its image has OpenCV), staged beside the
# inbox on the same volume, then renamed in one by one: a drop as a user's file manager makes.
drop_photos() {
    podman exec -i "$(container watcher)" python - "$PHOTOS" <<'PY'
import os, sys
from pathlib import Path

import cv2
import numpy as np

count = int(sys.argv[1])
staging, inbox = Path("/srv/moodwatch/data/staging"), Path("/srv/moodwatch/data/inbox/compose-run")
staging.mkdir(parents=True, exist_ok=True)
inbox.mkdir(parents=True, exist_ok=True)
for i in range(count):
    rng = np.random.default_rng(i)  # every photo's bytes differ: no duplicates
    img = rng.integers(0, 80, (240, 320, 3), dtype=np.uint8)
    colour = (40, 220, 240) if i % 2 else (200, 60, 40)
    cv2.circle(img, (160 + int(rng.integers(-20, 21)), 120), 70, colour, -1)
    cv2.imwrite(str(staging / f"photo_{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
for path in sorted(staging.iterdir()):
    os.rename(path, inbox / path.name)
PY
}

# Every worker node (the classify workers and the trainer) has said it serves a model, as the
# watcher's container sees it: the drop is timed from a settled stack. (Right after a start,
# a container's first name lookups can take tens of seconds while aardvark-dns, podman's
# resolver, restarts for each container that joins the network.)
workers_ready() {
    [[ $(podman exec "$(container watcher)" moodwatch status 2>/dev/null | grep -o 'ready (model' | wc -l) \
        -ge $((WORKERS + 1)) ]]
}
claims_left() { podman exec "$(container redis)" redis-cli --scan --pattern 'moodwatch:claim:*' | wc -l; }
no_claims_left() { [[ $(claims_left) == 0 ]]; }
rows_done() { [[ $(psql_q "select count(*) from results") -ge $PHOTOS ]]; }
inbox_empty() {
    [[ $(podman exec "$(container watcher)" find /srv/moodwatch/data/inbox -type f | wc -l) == 0 ]]
}

main() {
    base_image
    build_images
    down
    # KEEP_STACK=1 leaves it running to look at (the next run takes it down first).
    [[ ${KEEP_STACK:-0} == 1 ]] || trap 'say "taking the stack down"; down' EXIT

    local started=$SECONDS
    compose up -d --no-build redis postgres > "$WORK/up-db.log" 2>&1
    wait_for "Redis" podman exec "$(container redis)" redis-cli ping
    wait_for "PostgreSQL" podman exec "$(container postgres)" pg_isready -U moodwatch -d moodwatch
    run_once migrate
    run_once publish
    # The rest: --scale for a Docker engine, the override's deploy.replicas for podman-compose.
    compose up -d --no-build --scale "worker=$WORKERS" > "$WORK/up.log" 2>&1
    local running
    running=$(podman ps --filter "name=^${PROJECT}_worker_" --format '{{.Names}}' | wc -l)
    say "stack up in $((SECONDS - started)) s: $running worker containers"
    ((running == WORKERS)) || die "expected $WORKERS worker containers, found $running"

    local name mounts
    for name in $(podman ps --filter "name=^${PROJECT}_worker_" --format '{{.Names}}'); do
        mounts=$(podman inspect --format '{{range .Mounts}}{{.Destination}} {{end}}' "$name")
        [[ -z $mounts ]] || die "$name mounts $mounts"
    done
    say "workers mount nothing (no inbox, no models)"

    wait_for "every worker to serve a model" workers_ready
    say "$((WORKERS + 1)) worker nodes ready $((SECONDS - started)) s after the start (the classify" \
        "workers' model fetched from the database)"

    local dropped=$SECONDS
    drop_photos
    say "dropped $PHOTOS photos into the watcher's inbox"
    wait_for "$PHOTOS rows" rows_done
    local rows_at=$SECONDS
    wait_for "the watcher to move every photo out of the inbox" inbox_empty
    say "every photo has its row after $((rows_at - dropped)) s and left the inbox after $((SECONDS - dropped)) s" \
        "(counted from the drop)"

    say "rows by status and model version:"
    psql_q "select status, coalesce(model_version, '-'), count(*) from results group by 1, 2 order by 1" \
        | sed 's/^/    /'
    local moved classified
    moved=$(podman exec "$(container watcher)" find /srv/moodwatch/data/processed -type f | wc -l)
    classified=$(psql_q "select count(*) from results where status = 'classified'")
    say "files moved to processed/ by the watcher: $moved; photos' bytes left in Redis: $(claims_left)"
    for name in $(podman ps --filter "name=^${PROJECT}_worker_" --format '{{.Names}}'); do
        say "$name classified $(podman logs "$name" 2>&1 | grep -c ': classified ' || true) photos;" \
            "its model cache: $(podman exec "$name" cat /tmp/moodwatch-model-cache/current 2>/dev/null || echo none)"
    done
    say "review page: HTTP $(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $MOODWATCH_WEB_TOKEN" \
        http://127.0.0.1:8088/ || true)"
    [[ $classified == "$PHOTOS" && $moved == "$PHOTOS" ]] || die "expected $PHOTOS classified and moved"
    wait_for "the photos' bytes to leave Redis" no_claims_left
    say "ok: $PHOTOS photos classified by $WORKERS workers without the inbox or the models"
}

main "$@"

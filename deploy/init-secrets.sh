#!/bin/sh
# Create the secret files the compose files mount (their `secrets:`), before the first start:
#
#   deploy/init-secrets.sh cloud    postgres-password, api-token, cloud-admin-password and
#                                   cloud-reviewer-password (random), azure-connection-string (empty)
#   deploy/init-secrets.sh edge     checks api-token, which is a copy of the cloud host's
#
# in INTELLIOPTICS_SECRETS_DIR (the environment, else .env, else deploy/secrets), relative to the
# repository root as compose reads it. A file that exists is kept as it is, so running it again is
# safe. The directory is private to its owner (0700); the files in it are 0644 because compose
# bind-mounts them as they are and the containers' own users (postgres, intellioptics) must read them.
set -eu

usage() {
    echo "usage: $0 cloud|edge" >&2
    exit 2
}
[ $# -eq 1 ] || usage
side="$1"
case "$side" in cloud | edge) ;; *) usage ;; esac

cd "$(dirname "$0")/.."
dir="${INTELLIOPTICS_SECRETS_DIR:-}"
if [ -z "$dir" ] && [ -f .env ]; then
    dir="$(sed -n 's/^[[:space:]]*INTELLIOPTICS_SECRETS_DIR=//p' .env | tail -n 1 | sed "s/^[\"']//; s/[\"']\$//")"
fi
dir="${dir:-./deploy/secrets}"

mkdir -p "$dir"
chmod 700 "$dir"

random_hex() {
    od -An -N24 -tx1 /dev/urandom | tr -d ' \n'
}

# create NAME VALUE: write VALUE (no line break) to NAME unless NAME exists.
create() {
    if [ -e "$dir/$1" ]; then
        echo "kept     $dir/$1"
        return
    fi
    (umask 022 && printf '%s' "$2" >"$dir/$1.tmp" && mv "$dir/$1.tmp" "$dir/$1")
    chmod 644 "$dir/$1"
    echo "created  $dir/$1"
}

if [ "$side" = cloud ]; then
    create postgres-password "$(random_hex)"
    # The SDK wants the first 20 characters of a token to be letters, digits or "_".
    create api-token "io_$(random_hex)"
    create cloud-admin-password "$(random_hex)"
    create cloud-reviewer-password "$(random_hex)"
    create azure-connection-string ""
    echo "give $dir/api-token to each edge (its deploy/secrets/api-token); log in to the review UI as"
    echo "admin or reviewer with the passwords in $dir/cloud-admin-password and cloud-reviewer-password"
    exit 0
fi

if [ ! -e "$dir/api-token" ]; then
    echo "missing  $dir/api-token: copy the cloud host's deploy/secrets/api-token there" >&2
    echo "         (an edge without a cloud: create it empty, e.g. : > $dir/api-token)" >&2
    exit 1
fi
chmod 644 "$dir/api-token"
echo "kept     $dir/api-token"

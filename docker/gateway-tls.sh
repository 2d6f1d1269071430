#!/bin/sh
# The gateway's HTTPS certificate: the one in $GATEWAY_TLS_CERT / $GATEWAY_TLS_KEY (yours, or the one an
# earlier start made), else a self-signed one made now and kept in the volume (launcher/tls.py makes
# the same one for a local run).
set -eu
cert="${GATEWAY_TLS_CERT:-/data/tls/gateway.crt}"
key="${GATEWAY_TLS_KEY:-/data/tls/gateway.key}"
if [ -s "$cert" ] && [ -s "$key" ]; then
    exit 0
fi
if [ -e "$cert" ] || [ -e "$key" ]; then
    echo "gateway-tls: $cert or $key is missing or empty: give both, or neither" >&2
    exit 1
fi
mkdir -p "$(dirname "$cert")" "$(dirname "$key")"
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=IntelliOptics edge gateway" \
    -addext "subjectAltName=DNS:localhost,DNS:$(hostname),IP:127.0.0.1,IP:::1" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout "$key" -out "$cert" 2>/dev/null
chmod 644 "$cert"
echo "gateway-tls: self-signed certificate written to $cert" >&2

#!/bin/sh
# A gateway's HTTPS certificate, for both nginx images (the edge's gateway, the cloud-gateway): the one
# at the paths its settings name (yours, or the one an earlier start made), else a self-signed one made
# now and kept in the volume (launcher/tls.py makes the same one for a local run).
#
# The image says which of its settings hold the paths, and what the certificate is called:
#   TLS_CERT_VARIABLE  the variable with the certificate's path (default GATEWAY_TLS_CERT)
#   TLS_KEY_VARIABLE   the variable with the key's path (default GATEWAY_TLS_KEY)
#   TLS_COMMON_NAME    the self-signed certificate's CN (default "IntelliOptics edge gateway")
set -eu
cert_variable="${TLS_CERT_VARIABLE:-GATEWAY_TLS_CERT}"
key_variable="${TLS_KEY_VARIABLE:-GATEWAY_TLS_KEY}"
common_name="${TLS_COMMON_NAME:-IntelliOptics edge gateway}"
cert="$(printenv "$cert_variable" || true)"
key="$(printenv "$key_variable" || true)"
if [ -z "$cert" ] || [ -z "$key" ]; then
    echo "gateway-tls: set $cert_variable and $key_variable (the certificate's and the key's paths)" >&2
    exit 1
fi
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
    -subj "/CN=$common_name" \
    -addext "subjectAltName=DNS:localhost,DNS:$(hostname),IP:127.0.0.1,IP:::1" \
    -addext "extendedKeyUsage=serverAuth" \
    -keyout "$key" -out "$cert" 2>/dev/null
chmod 644 "$cert"
echo "gateway-tls: self-signed certificate written to $cert" >&2

# gateway: nginx in front of edge-api, falling back to the cloud (port 30101).
# Build from the repository root: docker build -f docker/gateway.Dockerfile .
#
# The official image renders /etc/nginx/templates/*.template into /etc/nginx/conf.d/ with envsubst at
# start, so the settings below (and compose's environment) reach nginx; a local run renders the same
# template with launcher.gateway.
FROM nginx:1.27-alpine

# The cloud fallback verifies the cloud's TLS certificate against this bundle; openssl makes the
# gateway's own self-signed certificate at first start (docker/gateway-tls.sh).
RUN apk add --no-cache ca-certificates openssl

# Defaults for `docker run`; compose sets them all.
ENV GATEWAY_PORT=30101 \
    GATEWAY_TLS_PORT=30143 \
    GATEWAY_TLS_CERT=/data/tls/gateway.crt \
    GATEWAY_TLS_KEY=/data/tls/gateway.key \
    EDGE_API_UPSTREAM=edge-api:8718 \
    CLOUD_URL=http://cloud-api:8000

# The entrypoint exports NGINX_LOCAL_RESOLVERS from /etc/resolv.conf (Docker's DNS) for the template's
# `resolver`: the cloud name is resolved per request, so the gateway starts even while it is unknown.
ENV NGINX_ENTRYPOINT_LOCAL_RESOLVERS=1

# Substitute only the gateway's placeholders, whatever else the container's environment holds.
ENV NGINX_ENVSUBST_FILTER="^(GATEWAY_PORT|GATEWAY_TLS_PORT|GATEWAY_TLS_CERT|GATEWAY_TLS_KEY|EDGE_API_UPSTREAM|CLOUD_URL|NGINX_LOCAL_RESOLVERS)"

COPY nginx/gateway.conf.template /etc/nginx/templates/default.conf.template
# Runs before the template is rendered (the entrypoint runs /docker-entrypoint.d/*.sh in order), with
# the paths of the two settings named here (the script serves the cloud-gateway's image too).
ENV TLS_CERT_VARIABLE=GATEWAY_TLS_CERT \
    TLS_KEY_VARIABLE=GATEWAY_TLS_KEY \
    TLS_COMMON_NAME="IntelliOptics edge gateway"
COPY --chmod=755 docker/gateway-tls.sh /docker-entrypoint.d/15-gateway-tls.sh

# The certificate and key: put your own there, or keep the self-signed one made at first start.
VOLUME ["/data/tls"]
EXPOSE 30101 30143
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]

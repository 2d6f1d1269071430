# cloud-gateway: nginx in front of the cloud-api replicas, the cloud's public door (ports 8000 and 8443).
# Build from the repository root: docker build -f docker/cloud-gateway.Dockerfile .
#
# The official image renders /etc/nginx/templates/*.template into /etc/nginx/conf.d/ with envsubst at
# start, so the settings below (and compose's environment) reach nginx; launcher.cloud_gateway renders
# the same template for a local run. nginx 1.27.3 or later: the upstream's `resolve` follows the
# replicas that `docker compose up --scale cloud-api=N` starts and stops.
FROM nginx:1.27-alpine

# openssl makes the gateway's self-signed certificate at first start (docker/gateway-tls.sh).
RUN apk add --no-cache openssl

# Defaults for `docker run`; compose sets them all. CLOUD_API_SERVERS is the upstream's server lines:
# the compose service's name, re-resolved while nginx runs (every replica is one address of it).
ENV CLOUD_GATEWAY_PORT=8000 \
    CLOUD_GATEWAY_TLS_PORT=8443 \
    CLOUD_GATEWAY_TLS_CERT=/data/tls/cloud-gateway.crt \
    CLOUD_GATEWAY_TLS_KEY=/data/tls/cloud-gateway.key \
    CLOUD_API_SERVERS="server cloud-api:8000 resolve max_fails=1 fail_timeout=5s;"

# The entrypoint exports NGINX_LOCAL_RESOLVERS from /etc/resolv.conf (Docker's DNS) for the template's
# `resolver`, which the upstream's `resolve` asks.
ENV NGINX_ENTRYPOINT_LOCAL_RESOLVERS=1

# Substitute only the gateway's placeholders, whatever else the container's environment holds.
ENV NGINX_ENVSUBST_FILTER="^(CLOUD_GATEWAY_PORT|CLOUD_GATEWAY_TLS_PORT|CLOUD_GATEWAY_TLS_CERT|CLOUD_GATEWAY_TLS_KEY|CLOUD_API_SERVERS|NGINX_LOCAL_RESOLVERS)"

COPY nginx/cloud-gateway.conf.template /etc/nginx/templates/default.conf.template
# The edge gateway's certificate script, told where this image's certificate goes; it runs before the
# template is rendered (the entrypoint runs /docker-entrypoint.d/*.sh in order).
ENV TLS_CERT_VARIABLE=CLOUD_GATEWAY_TLS_CERT \
    TLS_KEY_VARIABLE=CLOUD_GATEWAY_TLS_KEY \
    TLS_COMMON_NAME="IntelliOptics cloud gateway"
COPY --chmod=755 docker/gateway-tls.sh /docker-entrypoint.d/15-gateway-tls.sh

# The certificate and key: put your own there, or keep the self-signed one made at first start.
VOLUME ["/data/tls"]
EXPOSE 8000 8443
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]

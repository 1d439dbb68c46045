# Local stand-in for mcr.microsoft.com/dotnet/aspnet:10.0 (no registry is reachable): same layout, user and
# environment as the official image, with the host's .NET runtime copied in (context built by build-base-images.sh).
FROM debian:bookworm-slim
ARG DOTNET_VERSION
ENV APP_UID=1654 \
    ASPNETCORE_HTTP_PORTS=8080 \
    DOTNET_RUNNING_IN_CONTAINER=true \
    DOTNET_VERSION=${DOTNET_VERSION} \
    ASPNET_VERSION=${DOTNET_VERSION}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ca-certificates libc6 libgcc-s1 libicu72 libssl3 libstdc++6 tzdata zlib1g \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid=$APP_UID app \
    && useradd --no-log-init --uid=$APP_UID --gid=$APP_UID --create-home app
COPY dotnet /usr/share/dotnet
RUN ln -s /usr/share/dotnet/dotnet /usr/bin/dotnet && dotnet --list-runtimes

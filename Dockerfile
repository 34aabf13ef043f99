# pj's container image: a static binary and CA certificates on an empty
# base, run as a non-root user. `make image` builds it as pj:latest with
# docker, podman or buildah; see README.md, "In a container".
#
# Two ways to get the binary, chosen by BINARY_FROM:
#   build  (the default) compiles it in a Go image, for any target
#          platform without emulation (the compiler cross-compiles);
#   local  copies one compiled on the host (bin/image/OS-ARCH/pj and
#          bin/image/ca-certificates.crt, which `make image` prepares
#          when the Go image cannot be pulled): no base image at all.
ARG BINARY_FROM=build
ARG GO_IMAGE=docker.io/library/golang:1.26-bookworm
# The build stage runs on the building machine's platform and
# cross-compiles; BuildKit sets BUILDPLATFORM, and make image passes it to
# buildah and podman.
ARG BUILDPLATFORM

FROM --platform=$BUILDPLATFORM ${GO_IMAGE} AS build
ARG TARGETOS TARGETARCH VERSION=devel COMMIT=unknown DATE=unknown
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY cmd cmd
COPY internal internal
RUN CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH go build -trimpath \
      -ldflags "-s -w -X github.com/pj-proxy/pj/internal/version.Version=$VERSION -X github.com/pj-proxy/pj/internal/version.Commit=$COMMIT -X github.com/pj-proxy/pj/internal/version.Date=$DATE" \
      -o /out/pj ./cmd/pj \
 && cp /etc/ssl/certs/ca-certificates.crt /out/

FROM scratch AS local
ARG TARGETOS TARGETARCH
COPY bin/image/$TARGETOS-$TARGETARCH/pj /out/pj
COPY bin/image/ca-certificates.crt /out/ca-certificates.crt

FROM ${BINARY_FROM} AS binary

FROM scratch
ARG VERSION=devel
LABEL org.opencontainers.image.title="pj" \
      org.opencontainers.image.description="pj, a TCP (layer 4) reverse proxy" \
      org.opencontainers.image.version="$VERSION"
COPY --from=binary /out/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=binary /out/pj /pj
# 65532 is "nonroot" in distroless images; a number, so that Kubernetes'
# runAsNonRoot can check it without a passwd file.
USER 65532:65532
ENTRYPOINT ["/pj"]

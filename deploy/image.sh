#!/usr/bin/env bash
# Builds pj's container image from the Dockerfile with whichever of docker,
# podman or buildah works here; `make image` runs it. Settings, from the
# environment:
#
#   IMAGE        the name to build                    pj:latest
#   PLATFORMS    space-separated OS/ARCH list; more   linux/<this machine's arch>
#                than one builds a multi-arch manifest
#   ENGINE       docker, podman or buildah            the first that works
#   BINARY_FROM  build: compile in the Go image;      auto: build if the Go image
#                local: compile here, no base image   can be had, else local
#   GO_IMAGE     the Go image of the build stage      docker.io/library/golang:1.26-bookworm
#   VERSION, COMMIT, DATE   stamped into the binary (pj -V)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-pj:latest}
PLATFORMS=${PLATFORMS:-linux/$(go env GOARCH)}
ENGINE=${ENGINE:-}
BINARY_FROM=${BINARY_FROM:-auto}
GO_IMAGE=${GO_IMAGE:-docker.io/library/golang:1.26-bookworm}
VERSION=${VERSION:-devel}
COMMIT=${COMMIT:-unknown}
DATE=${DATE:-unknown}

say() { echo "image: $*" >&2; }
die() { say "$*"; exit 1; }

# A docker client without a daemon, or a podman that cannot reach its
# storage, is installed but does not work: ask each, do not trust PATH.
detect_engine() {
	local tried=()
	if command -v docker >/dev/null; then
		docker info >/dev/null 2>&1 && { echo docker; return; }
		tried+=("docker (no daemon answers: is dockerd running?)")
	fi
	if command -v podman >/dev/null; then
		podman info >/dev/null 2>&1 && { echo podman; return; }
		tried+=("podman (podman info fails)")
	fi
	if command -v buildah >/dev/null; then
		buildah info >/dev/null 2>&1 && { echo buildah; return; }
		tried+=("buildah (buildah info fails)")
	fi
	if [ ${#tried[@]} -eq 0 ]; then
		die "no container engine: install docker, podman or buildah (Debian: apt-get install -y buildah)"
	fi
	die "no container engine works here; tried: ${tried[*]}"
}

# have_go_image reports whether the build stage's image is here or can be
# pulled; offline, the pull fails at once.
have_go_image() {
	case $ENGINE in
	docker) docker image inspect "$GO_IMAGE" >/dev/null 2>&1 || docker pull -q "$GO_IMAGE" >/dev/null 2>&1 ;;
	*) "$ENGINE" inspect --type image "$GO_IMAGE" >/dev/null 2>&1 || "$ENGINE" pull -q "$GO_IMAGE" >/dev/null 2>&1 ;;
	esac
}

# prepare_local compiles pj for every platform into bin/image/OS-ARCH/pj
# and copies this machine's CA certificates beside them.
prepare_local() {
	rm -rf bin/image
	local p os arch
	for p in $PLATFORMS; do
		os=${p%%/*} arch=${p#*/}
		say "compiling pj for $os/$arch"
		CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath \
			-ldflags "-s -w -X github.com/pj-proxy/pj/internal/version.Version=$VERSION -X github.com/pj-proxy/pj/internal/version.Commit=$COMMIT -X github.com/pj-proxy/pj/internal/version.Date=$DATE" \
			-o "bin/image/$os-$arch/pj" ./cmd/pj
	done
	local ca
	for ca in /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem; do
		if [ -s "$ca" ]; then
			cp "$ca" bin/image/ca-certificates.crt
			return
		fi
	done
	die "no CA certificates on this machine to put in the image: install them (Debian: apt-get install -y ca-certificates)"
}

[ -n "$ENGINE" ] || ENGINE=$(detect_engine)
case $ENGINE in docker | podman | buildah) ;; *) die "ENGINE=$ENGINE: want docker, podman or buildah" ;; esac

if [ "$BINARY_FROM" = auto ]; then
	if have_go_image; then
		BINARY_FROM=build
	else
		say "$GO_IMAGE cannot be pulled: compiling pj here instead (the image needs no base image)"
		BINARY_FROM=local
	fi
fi
case $BINARY_FROM in
build) ;;
local) prepare_local ;;
*) die "BINARY_FROM=$BINARY_FROM: want build, local or auto" ;;
esac

platforms=${PLATFORMS// /,}
args=(--build-arg "BINARY_FROM=$BINARY_FROM" --build-arg "GO_IMAGE=$GO_IMAGE"
	--build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT" --build-arg "DATE=$DATE")
multi=false
[[ $platforms == *,* ]] && multi=true

say "building $IMAGE for $platforms with $ENGINE (binary from: $BINARY_FROM)"
case $ENGINE in
docker)
	if $multi; then
		# A multi-platform image can be loaded only into Docker's
		# containerd image store (Docker 24+, "containerd-snapshotter").
		DOCKER_BUILDKIT=1 docker buildx build --platform "$platforms" "${args[@]}" -t "$IMAGE" --load .
	else
		DOCKER_BUILDKIT=1 docker build --platform "$platforms" "${args[@]}" -t "$IMAGE" .
	fi
	;;
podman | buildah)
	build=("$ENGINE" build)
	# chroot isolation runs the build stage's RUN steps without user
	# namespaces, which containers and CI sandboxes often lack.
	[ "$ENGINE" = buildah ] && build+=(--isolation "${BUILDAH_ISOLATION:-chroot}")
	# Older buildah and podman leave BUILDPLATFORM unset, and the build
	# stage would then run on each target platform, under emulation.
	build+=(--build-arg "BUILDPLATFORM=linux/$(go env GOHOSTARCH)")
	# The name may belong to an image or to a manifest list from an
	# earlier build: remove it, whichever it is.
	"$ENGINE" manifest rm "$IMAGE" >/dev/null 2>&1 || "$ENGINE" rmi "$IMAGE" >/dev/null 2>&1 || true
	if $multi; then
		"${build[@]}" --platform "$platforms" "${args[@]}" --manifest "$IMAGE" .
	else
		"${build[@]}" --platform "$platforms" "${args[@]}" -t "$IMAGE" .
	fi
	;;
esac
say "built $IMAGE ($platforms)"

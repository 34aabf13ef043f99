//go:build !linux

// Package engine is pj's event-driven data path. It is built on epoll and
// splice(2), so pj runs on Linux only.
package engine

// Building pj for another system stops here, with this one message: build
// with GOOS=linux (any architecture).
var _ = pj_runs_on_Linux_only_build_with_GOOS_linux

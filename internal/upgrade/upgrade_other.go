//go:build !linux

// Package upgrade hands a running pj's sockets to a new binary. It passes
// descriptors over unix sockets as Linux does, so pj runs on Linux only.
package upgrade

var _ = pj_runs_on_Linux_only_build_with_GOOS_linux

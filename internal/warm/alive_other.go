//go:build !linux

package warm

// Building pj for another system stops here too: warm connections are
// checked with Linux's POLLRDHUP. Build with GOOS=linux (any architecture).
var _ = pj_runs_on_Linux_only_build_with_GOOS_linux

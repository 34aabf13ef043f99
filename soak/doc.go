// Package soak is pj's soak suite: tests that drive the real pj binary
// over loopback for a long time and fail on growth that does not level
// off. See README.md; `make soak` runs the full scale.
package soak

//go:build !linux

package server

import (
	"net"
	"os"
	"syscall"
)

func setKeepAlive(fd int, _ net.KeepAliveConfig) error {
	return os.NewSyscallError("setsockopt", syscall.SetsockoptInt(fd, syscall.SOL_SOCKET, syscall.SO_KEEPALIVE, 1))
}

func acceptHint(error) string { return "none" }

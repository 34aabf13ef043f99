// Command pj is a TCP (layer 4) reverse proxy. See README.md.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/pj-proxy/pj/internal/cli"
	"github.com/pj-proxy/pj/internal/systemd"
	"github.com/pj-proxy/pj/internal/upgrade"
)

func main() {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)

	// The first SIGTERM or SIGINT starts a graceful shutdown (ctx is
	// cancelled); a second one means "now": exit 1 without waiting.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		sig := <-sigs
		cancel(fmt.Errorf("%s received (send it again to exit at once)", sig))
		sig = <-sigs
		fmt.Fprintf(os.Stderr, "pj: second %s received: exiting at once\n", sig)
		os.Exit(1)
	}()

	// SIGHUP reloads the configuration file.
	reload := coalesced(syscall.SIGHUP)

	// SIGUSR2 upgrades: the binary at the path pj was started from
	// (read now: once the file is replaced, /proc/self/exe names the old,
	// deleted one) takes over every listener.
	upgrades := coalesced(syscall.SIGUSR2)
	exe, err := os.Executable()
	if err != nil {
		exe = "" // SIGUSR2 then says why it cannot upgrade
	}

	// Sockets a service manager passed in (systemd socket activation).
	inherited := systemd.Listeners()
	opts := []cli.Option{cli.WithReload(reload), cli.WithInherited(inherited), cli.WithUpgrade(upgrades, exe, os.Args[1:])}

	// Started by an upgrade: take the running pj's sockets first.
	child, err := upgrade.FromEnv()
	if err != nil {
		fmt.Fprintf(os.Stderr, "pj: %v\n", err)
		os.Exit(1)
	}
	if child != nil {
		opts = append(opts, cli.WithUpgradeChild(child))
	}

	err = cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, opts...)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pj: %v\n", err)
	}
	os.Exit(cli.ExitCode(err))
}

// coalesced returns a channel that receives one value for sig, however
// many times sig arrives before it is read: one reload (or upgrade)
// pending is enough, since it reads the newest file.
func coalesced(sig os.Signal) <-chan struct{} {
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, sig)
	out := make(chan struct{}, 1)
	go func() {
		for range sigs {
			select {
			case out <- struct{}{}:
			default: // one pending is enough
			}
		}
	}()
	return out
}

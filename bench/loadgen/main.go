// Command loadgen is the backend and the load generator of pj's side-by-side
// benchmark (bench/run.sh; see bench/README.md).
//
//	loadgen serve -listen 127.0.0.1:0 -port-file F   the backend: echo, sink, source
//	loadgen run -mode MODE -target NAME -addr A ...  one measurement, one JSON line
//	loadgen wait -addr A -pid N                      until A answers an echo
//	loadgen ports -n N                               N free loopback ports
//	loadgen delay -to A -delay D                     a delay line to A: D each way
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	err := Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "loadgen: %v\n", err)
		os.Exit(1)
	}
}

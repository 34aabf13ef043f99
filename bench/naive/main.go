// Command naive is the 30-line Go TCP proxy that pj is measured against:
// net.Listen, a goroutine per connection, net.Dial, and two io.Copy (which
// splice between two *net.TCPConn). pj must never be worse than this on
// any figure of the benchmark: features must not cost speed.
package main

import (
	"io"
	"log"
	"net"
	"os"
)

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: naive LISTEN_ADDR BACKEND_ADDR")
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			log.Print(err)
			continue
		}
		go func() {
			defer c.Close()
			b, err := net.Dial("tcp", os.Args[2])
			if err != nil {
				return
			}
			defer b.Close()
			done := make(chan struct{})
			go func() {
				_, _ = io.Copy(b, c)
				_ = b.(*net.TCPConn).CloseWrite()
				close(done)
			}()
			_, _ = io.Copy(c, b)
			_ = c.(*net.TCPConn).CloseWrite()
			<-done
		}()
	}
}

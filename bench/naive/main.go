// Command naive is the 30-line Go TCP proxy that pj is measured against:
// net.Listen, a goroutine per connection, net.Dial, and two io.Copy (which
// splice between two *net.TCPConn). pj must never be worse than this on
// any figure of the benchmark: features must not cost speed.
//
// Given a certificate and its key, it terminates TLS with crypto/tls (the
// target naive-tls): what Go's TLS costs with nothing of pj around it.
package main

import (
	"crypto/tls"
	"io"
	"log"
	"net"
	"os"
)

type closeWriter interface{ CloseWrite() error }

func main() {
	if len(os.Args) != 3 && len(os.Args) != 5 {
		log.Fatal("usage: naive LISTEN_ADDR BACKEND_ADDR [CERT_FILE KEY_FILE]")
	}
	ln, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	if len(os.Args) == 5 {
		cert, err := tls.LoadX509KeyPair(os.Args[3], os.Args[4])
		if err != nil {
			log.Fatal(err)
		}
		ln = tls.NewListener(ln, &tls.Config{Certificates: []tls.Certificate{cert}})
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
				_ = b.(closeWriter).CloseWrite()
				close(done)
			}()
			_, _ = io.Copy(c, b)
			_ = c.(closeWriter).CloseWrite()
			<-done
		}()
	}
}

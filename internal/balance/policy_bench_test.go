package balance

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/pj-proxy/pj/internal/config"
)

// benchPool returns n backends with mixed weights (1 to 4) and loads (0 to
// 31 connections), all eligible: the steady state of a busy pool, where
// least-conn cannot stop its scan early.
func benchPool(n int) []*Backend {
	r := rand.New(rand.NewPCG(3, 4))
	bs := make([]*Backend, n)
	for i := range bs {
		bs[i] = &Backend{Address: fmt.Sprintf("10.0.%d.%d:80", i/250, i%250+1), Weight: 1 + r.IntN(4), State: newState()}
		bs[i].Active.Store(int64(r.IntN(32)))
	}
	return bs
}

// BenchmarkPick measures one Pick per policy and pool size, then the same
// from every P at once (the event loops share a policy).
func BenchmarkPick(b *testing.B) {
	clients := randomClients(1024)
	for _, algorithm := range config.Balances {
		b.Run(algorithm, func(b *testing.B) {
			for _, n := range []int{3, 100} {
				bs := benchPool(n)
				p := mustPolicy(b, algorithm, bs)
				b.Run(fmt.Sprint(n), func(b *testing.B) {
					b.ReportAllocs()
					i := 0
					for b.Loop() {
						p.Pick(bs, clients[i%len(clients)])
						i++
					}
				})
			}
			bs := benchPool(100)
			p := mustPolicy(b, algorithm, bs)
			b.Run("100-parallel", func(b *testing.B) {
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					var c netip.Addr
					for i := 0; pb.Next(); i++ {
						c = clients[i%len(clients)]
						p.Pick(bs, c)
					}
				})
			})
		})
	}
}

// BenchmarkPickWithBackendsOut measures the skipping paths: 100 backends
// with half of them out, every other one or the first 50 in a row.
func BenchmarkPickWithBackendsOut(b *testing.B) {
	clients := randomClients(1024)
	for _, algorithm := range config.Balances {
		for _, layout := range []string{"alternate", "adjacent"} {
			bs := benchPool(100)
			for i := range bs {
				if (layout == "alternate" && i%2 == 1) || (layout == "adjacent" && i < 50) {
					bs[i].SetAdmin(AdminDown)
				}
			}
			p := mustPolicy(b, algorithm, bs)
			b.Run(algorithm+"/"+layout, func(b *testing.B) {
				b.ReportAllocs()
				i := 0
				for b.Loop() {
					p.Pick(bs, clients[i%len(clients)])
					i++
				}
			})
		}
	}
}

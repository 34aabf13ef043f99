package ilist

import (
	"slices"
	"testing"
)

type item struct {
	name  string
	links Links[item]
}

func (i *item) Links() *Links[item] { return &i.links }

func names(l *List[item, *item]) []string {
	var out []string
	for e := l.Front(); e != nil; e = Next(e) {
		out = append(out, e.name)
	}
	// The same, walked back from the tail: the links agree both ways.
	var back []string
	for e := l.tail; e != nil; e = e.links.prev {
		back = append(back, e.name)
	}
	slices.Reverse(back)
	if !slices.Equal(out, back) {
		panic("forward and backward walks differ")
	}
	return out
}

func TestList(t *testing.T) {
	tests := []struct {
		name string
		ops  func(l *List[item, *item], it map[string]*item)
		want []string
	}{
		{"push", func(l *List[item, *item], it map[string]*item) {
			l.PushBack(it["a"])
			l.PushBack(it["b"])
			l.PushBack(it["c"])
		}, []string{"a", "b", "c"}},
		{"remove the middle, the front, the back", func(l *List[item, *item], it map[string]*item) {
			for _, n := range []string{"a", "b", "c", "d", "e"} {
				l.PushBack(it[n])
			}
			l.Remove(it["c"])
			l.Remove(it["a"])
			l.Remove(it["e"])
		}, []string{"b", "d"}},
		{"remove one not in the list", func(l *List[item, *item], it map[string]*item) {
			l.PushBack(it["a"])
			l.Remove(it["b"])
		}, []string{"a"}},
		{"remove all, push again", func(l *List[item, *item], it map[string]*item) {
			l.PushBack(it["a"])
			l.PushBack(it["b"])
			l.Remove(it["a"])
			l.Remove(it["b"])
			l.PushBack(it["b"])
		}, []string{"b"}},
		{"move to back", func(l *List[item, *item], it map[string]*item) {
			l.PushBack(it["a"])
			l.PushBack(it["b"])
			l.PushBack(it["c"])
			l.MoveToBack(it["a"])
			l.MoveToBack(it["a"]) // already last
			l.MoveToBack(it["d"]) // in no list: stays out
		}, []string{"b", "c", "a"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			it := map[string]*item{}
			for _, n := range []string{"a", "b", "c", "d", "e"} {
				it[n] = &item{name: n}
			}
			var l List[item, *item]
			tc.ops(&l, it)
			if got := names(&l); !slices.Equal(got, tc.want) {
				t.Fatalf("list %v; want %v", got, tc.want)
			}
			if l.Empty() != (len(tc.want) == 0) {
				t.Fatalf("Empty() = %v with %d elements", l.Empty(), len(tc.want))
			}
			for n, e := range it {
				if l.Contains(e) != slices.Contains(tc.want, n) {
					t.Fatalf("Contains(%s) = %v", n, l.Contains(e))
				}
			}
		})
	}
}

package config

import (
	"strings"
	"unicode/utf8"
)

// suggest returns the candidate closest to word by edit distance, or ""
// when none is close enough to be what was meant: at most a third of the
// word's letters (and never more than 3) may differ. Case, and - for _,
// are not counted as differences: "Connect-Timeout" suggests
// connect_timeout. Two candidates equally close suggest neither ("v3" is
// as close to v1 as to v2).
func suggest(word string, candidates []string) string {
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "-", "_") }
	w := norm(word)
	n := utf8.RuneCountInString(w)
	limit := min(3, max(1, n/3))
	best, bestDist, tie := "", limit+1, false
	for _, c := range candidates {
		if m := utf8.RuneCountInString(c); n > m+limit || m > n+limit {
			continue // the lengths alone differ too much (and a long word costs no distance)
		}
		switch d := editDistance(w, norm(c)); {
		case d < bestDist:
			best, bestDist, tie = c, d, false
		case d == bestDist && c != best:
			tie = true
		}
	}
	if tie {
		return ""
	}
	return best
}

// editDistance is the Levenshtein distance between a and b, in runes.
func editDistance(a, b string) int {
	ra, rb := []rune(a), []rune(b)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			cost := 1
			if ra[i-1] == rb[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(rb)]
}

package admission

// Len is the number of ranges of addresses after merging: a list of 1000
// CIDRs of which many overlap or touch may make far fewer.
func (s *CIDRSet) Len() int {
	if s == nil {
		return 0
	}
	return len(s.v4first) + len(s.v6first)
}

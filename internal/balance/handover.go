package balance

// Restore gives the backend the state it had in the pj this one upgrades:
// the operator's verdict (drain, down) and the health checks' (up or
// down). The checks go on from there.
func (s *State) Restore(admin AdminState, healthy bool) {
	s.SetAdmin(admin)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.unhealthy.Store(!healthy)
	s.fails.Store(0)
	s.oks = 0
}

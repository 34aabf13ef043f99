package observe

// Side names who ended a connection: its log line's closed_by.
type Side uint8

// The sides of a connection.
const (
	SideNone Side = iota // not ended yet
	SideClient
	SideBackend
	SidePJ
)

func (s Side) String() string {
	switch s {
	case SideClient:
		return "client"
	case SideBackend:
		return "backend"
	case SidePJ:
		return "pj"
	}
	return ""
}

// Other is the far side of a relay: the backend for the client, the
// client for the backend.
func (s Side) Other() Side {
	if s == SideClient {
		return SideBackend
	}
	return SideClient
}

// SideError is an error on one side of a connection; the side is the one
// that ended it.
type SideError struct {
	Side Side
	Err  error
}

func (e *SideError) Error() string { return e.Side.String() + ": " + e.Err.Error() }
func (e *SideError) Unwrap() error { return e.Err }

package balance

import "errors"

// ErrNoBackend ends a connection for which no backend was eligible, and
// says where to look.
var ErrNoBackend = errors.New("no backend is eligible (each is down, drained or unresolved): " +
	"check their health and states on the status page or in GET /api/v1/proxies")

package admin

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
)

// ReloadResult is the answer to POST /api/v1/reload: whether the
// configuration file is valid, its problems if not, and what the reload
// does (or, for a dry run, would do).
type ReloadResult struct {
	Valid   bool           `json:"valid"`
	DryRun  bool           `json:"dry_run"`
	Applied bool           `json:"applied"`
	Errors  []string       `json:"errors"`
	Changes []ReloadChange `json:"changes"`
	// ConnectionsAffected is the sum of the changes' connections.
	ConnectionsAffected int64 `json:"connections_affected"`
	// Warnings are what the file sets that pj ignores (retired keys), one
	// line each, naming where; none is an error.
	Warnings []string `json:"warnings,omitempty"`
	// Status is the HTTP status of the answer: 200 for a valid file, 422
	// for an invalid one, 409 when pj runs without a file, 503 when it is
	// shutting down.
	Status int `json:"-"`
}

// ReloadChange is one change of a reload.
type ReloadChange struct {
	// Action is "add", "remove" or "change".
	Action string `json:"action"`
	// Proxy is empty for a setting of the whole process.
	Proxy  string   `json:"proxy,omitempty"`
	Listen string   `json:"listen,omitempty"`
	Keys   []string `json:"keys,omitempty"`
	// ConnectionsAffected is how many live connections the change cuts:
	// those of a listener that stops, once the grace period has passed.
	ConnectionsAffected int64 `json:"connections_affected"`
}

// Reloader reloads the configuration file of the running pj, or with
// dryRun only says what a reload would do. It returns once done, or when
// ctx ends.
type Reloader func(ctx context.Context, dryRun bool) ReloadResult

// reload is POST /api/v1/reload[?dry_run=true].
func (h *handler) reload(w http.ResponseWriter, r *http.Request) {
	if h.opt.Reload == nil {
		writeError(w, http.StatusNotImplemented, "this pj cannot reload through its admin listener")
		return
	}
	dryRun := false
	if v := r.URL.Query().Get("dry_run"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("dry_run %q: expected true or false", shorten(v, 20)))
			return
		}
		dryRun = b
	}
	res := h.opt.Reload(r.Context(), dryRun)
	if res.Errors == nil {
		res.Errors = []string{}
	}
	if res.Changes == nil {
		res.Changes = []ReloadChange{}
	}
	if res.Status == 0 {
		res.Status = http.StatusOK
	}
	if !dryRun {
		h.opt.Logger.Info("reload requested through the admin API", "from", r.RemoteAddr, "valid", res.Valid, "applied", res.Applied)
	}
	writeJSON(w, res.Status, res)
}

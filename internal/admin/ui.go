package admin

import (
	"embed"
	"io/fs"
	"net/http"
)

// The status page is one self-contained page: its assets are in the
// binary, and it loads nothing from elsewhere.
//
//go:embed ui
var uiFiles embed.FS

func statusPage() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		// Only a build without the ui directory gets here.
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "this build of pj has no status page: "+err.Error(), http.StatusNotFound)
		})
	}
	fsrv := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		fsrv.ServeHTTP(w, r)
	})
}

package supervisor

import (
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strings"
)

// The live dashboard: static files embedded in the binary (no CDN, no
// build step), served read-only at /ui/. The page reads everything it
// shows from the control API (/v1/status, /v1/requests/ID) with the
// caller's credentials; the files themselves hold no data, so the TCP
// listener serves them without the token (see requireToken) and the page
// asks for it.
//
//go:embed ui
var uiFiles embed.FS

// uiHandler serves the dashboard's files under /ui/.
func uiHandler() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree is fixed at build time
	}
	files := http.StripPrefix("/ui/", http.FileServerFS(sub))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-cache")
		files.ServeHTTP(w, r)
	})
}

// isUIPath reports whether p, cleaned as the mux cleans it, is one of
// the dashboard's static files ("/ui/../v1/status" is not).
func isUIPath(p string) bool {
	if c := path.Clean(p); c == "/ui" || strings.HasPrefix(c, "/ui/") {
		return strings.HasPrefix(p, "/ui")
	}
	return false
}

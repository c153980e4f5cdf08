package control

import (
	"fmt"
	"net/http"
	"time"
)

// WithHandler serves h at path on the control socket, for GET (and HEAD) requests, behind the
// checks every route has: the peer's uid, and for one of forkd's workers what
// control.worker_access lets it read (h only reads). The reply is h's own, not JSON: the master
// serves its Prometheus metrics at /metrics this way, in their text format.
func WithHandler(path string, h http.Handler) Option {
	return func(s *Server) {
		if s.handlers == nil {
			s.handlers = make(map[string]http.Handler)
		}
		s.handlers[path] = h
	}
}

// serveHandler answers a request for a path WithHandler set, or refuses it as the API's routes do.
func (s *Server) serveHandler(w http.ResponseWriter, r *http.Request, c *conn, h http.Handler) {
	err := s.authorize(c.cred)
	if err == nil && r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		err = &Error{Code: http.StatusMethodNotAllowed, Message: fmt.Sprintf("%s does not accept %s (use GET)", r.URL.Path, r.Method)}
	}
	if err == nil {
		err = s.authorizeWorker(r.Context(), c, true)
	}
	_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(s.limits.writeTimeout))
	if err != nil {
		code := statusCode(err)
		if code == http.StatusForbidden {
			w.Header().Set("Connection", "close")
		}
		writeJSON(w, code, errorBody{Error: err.Error()})
		s.logRequest(r, c.cred, code, err)
		return
	}
	h.ServeHTTP(w, r)
	s.logRequest(r, c.cred, http.StatusOK, nil)
}

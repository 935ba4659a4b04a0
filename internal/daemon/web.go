package daemon

// webRoutes are the status page's routes (issue 13).
func (s *Server) webRoutes() map[string]route { return nil }

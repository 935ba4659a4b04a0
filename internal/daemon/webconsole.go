package daemon

// webConsoleRoutes are the web console's routes (issue 13).
func (s *Server) webConsoleRoutes() map[string]route { return nil }

package config

// checkPreloadCommand is replaced by the fork server's detection.
func checkPreloadCommand(path string, argv []string) error { return nil }

package testutil

import "strings"

// LogField returns the value of key in a line of pj's text log
// ("... address=127.0.0.1:8080 ..." gives "127.0.0.1:8080"), or "".
func LogField(line, key string) string {
	_, after, ok := strings.Cut(line, " "+key+"=")
	if !ok {
		return ""
	}
	v, _, _ := strings.Cut(after, " ")
	return v
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

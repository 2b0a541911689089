package redis

import "testing"

func TestVersionAtLeast(t *testing.T) {
	for v, want := range map[string]bool{
		"7.0.15": true, "6.2.0": true, "6.2": true, "10.0.1": true,
		"6.0.16": false, "5.0.7": false, "6.1.9": false,
		"weird": true, "": true, "x.y.z": true,
	} {
		if got := versionAtLeast(v, MinServerVersion); got != want {
			t.Errorf("versionAtLeast(%q) = %v, want %v", v, got, want)
		}
	}
}

package config

import (
	"reflect"
	"strings"
	"testing"
)

// TestDocumentedDefaultsAreTheDefaults: every default the variable table
// (and so the README and --help) states as a value is the value Load uses
// when nothing is set, so the two places a default is written cannot
// drift. Defaults stated in words ("number of CPUs", "the concurrency")
// are derived in Load and checked by TestDefaults.
func TestDocumentedDefaultsAreTheDefaults(t *testing.T) {
	t.Parallel()
	unset, err := Load(lookup(nil, nil, nil), 3)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, v := range Vars {
		if v.Default == "" || strings.Contains(v.Default, " ") {
			continue // none, or a default in words
		}
		set, err := Load(lookup(nil, map[string]string{v.Key: v.Default}, nil), 3)
		if err != nil {
			t.Errorf("%s: the documented default %q is not a value Load accepts: %v", v.Key, v.Default, err)
			continue
		}
		checked++
		if !reflect.DeepEqual(set, unset) {
			t.Errorf("%s: the table says the default is %q, but Load's default differs:\nset:   %+v\nunset: %+v", v.Key, v.Default, set, unset)
		}
	}
	if checked < 20 {
		t.Fatalf("only %d documented defaults were values Load accepts; the check lost its teeth", checked)
	}
}

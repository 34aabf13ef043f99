package version

import (
	"runtime"
	"strings"
	"testing"
)

func TestStringHasEveryField(t *testing.T) {
	i := Info{Version: "v1.2.3", Commit: "0123abcd", Date: "2026-11-26T00:42:20Z", GoVersion: "go1.26.8", Platform: "linux/arm64"}
	want := "pj v1.2.3\ncommit: 0123abcd\nbuilt: 2026-11-26T00:42:20Z\ngo: go1.26.8\nplatform: linux/arm64\n"
	if got := i.String(); got != want {
		t.Fatalf("String() = %q, want %q", got, want)
	}
}

func TestLinkerValuesWin(t *testing.T) {
	defer func(v, c, d string) { Version, Commit, Date = v, c, d }(Version, Commit, Date)
	Version, Commit, Date = "v9.9.9", "feedface", "2027-01-02T03:04:05Z"
	got := Build()
	if got.Version != "v9.9.9" || got.Commit != "feedface" || got.Date != "2027-01-02T03:04:05Z" {
		t.Fatalf("Build() = %+v, want the linker-set values", got)
	}
	if got.GoVersion != runtime.Version() || got.Platform != runtime.GOOS+"/"+runtime.GOARCH {
		t.Fatalf("Build() = %+v, want this toolchain and platform", got)
	}
	if Get() != "v9.9.9" {
		t.Fatalf("Get() = %q, want v9.9.9", Get())
	}
}

func TestFallbacksAreNeverEmpty(t *testing.T) {
	defer func(v, c, d string) { Version, Commit, Date = v, c, d }(Version, Commit, Date)
	Version, Commit, Date = "", "", ""
	got := Build()
	for name, v := range map[string]string{"version": got.Version, "commit": got.Commit, "date": got.Date} {
		if v == "" || strings.ContainsAny(v, " \n") {
			t.Errorf("%s = %q, want one non-empty word", name, v)
		}
	}
}

package jumpset

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// tree makes links (name -> target) and plain files (target "") under a temporary root
// and returns it.
func tree(t *testing.T, entries [][2]string) string {
	t.Helper()
	root := t.TempDir()
	for _, e := range entries {
		p := filepath.Join(root, e[0])
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		target := strings.ReplaceAll(e[1], "$ROOT", root)
		var err error
		if target == "" {
			err = os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755)
		} else {
			err = os.Symlink(target, p)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestIptablesIsResolvedThroughItsLinks(t *testing.T) {
	for _, c := range []struct {
		name    string
		entries [][2]string
		want    Backend
	}{
		{"Debian nft: absolute links through alternatives", [][2]string{
			{"usr/sbin/xtables-nft-multi", ""},
			{"usr/sbin/iptables-nft", "xtables-nft-multi"},
			{"etc/alternatives/iptables", "$ROOT/usr/sbin/iptables-nft"},
			{"usr/sbin/iptables", "$ROOT/etc/alternatives/iptables"},
		}, BackendNft},
		{"Debian legacy", [][2]string{
			{"usr/sbin/xtables-legacy-multi", ""},
			{"usr/sbin/iptables-legacy", "xtables-legacy-multi"},
			{"etc/alternatives/iptables", "$ROOT/usr/sbin/iptables-legacy"},
			{"usr/sbin/iptables", "$ROOT/etc/alternatives/iptables"},
		}, BackendLegacy},
		{"a direct relative link to the multi binary", [][2]string{
			{"sbin/xtables-nft-multi", ""},
			{"usr/sbin/iptables", "../../sbin/xtables-nft-multi"},
		}, BackendNft},
		{"iptables before 1.8", [][2]string{
			{"sbin/xtables-multi", ""},
			{"usr/sbin/iptables", "../../sbin/xtables-multi"},
		}, BackendLegacy},
		{"the name decides before the link is followed further", [][2]string{
			{"usr/sbin/iptables-nft", "missing-binary"},
			{"usr/sbin/iptables", "iptables-nft"},
		}, BackendNft},
	} {
		root := tree(t, c.entries)
		got, err := resolveIptablesAt(filepath.Join(root, "usr/sbin/iptables"))
		if err != nil || got != c.want {
			t.Errorf("%s: got %q, %v; want %q", c.name, got, err, c.want)
		}
	}
}

func TestAnIptablesWhoseNameSaysNothingIsAnError(t *testing.T) {
	for _, c := range []struct {
		name    string
		entries [][2]string
		says    string
	}{
		{"a wrapper script", [][2]string{{"usr/sbin/iptables", ""}}, "is not a link"},
		{"a link to a wrapper", [][2]string{
			{"usr/sbin/iptables-wrapper", ""},
			{"usr/sbin/iptables", "iptables-wrapper"},
		}, "iptables -> "},
		{"a dangling link", [][2]string{{"usr/sbin/iptables", "nowhere"}}, "cannot follow"},
		{"a loop", [][2]string{{"usr/sbin/iptables", "iptables2"}, {"usr/sbin/iptables2", "iptables"}}, "too many"},
	} {
		root := tree(t, c.entries)
		got, err := resolveIptablesAt(filepath.Join(root, "usr/sbin/iptables"))
		var e *Error
		if !errors.Is(err, ErrConfig) || !errors.As(err, &e) || e.Key != "backend" {
			t.Errorf("%s: got %q, %v", c.name, got, err)
			continue
		}
		if !strings.Contains(e.Message, c.says) {
			t.Errorf("%s: %q does not say %q", c.name, e.Message, c.says)
		}
	}
}

func TestResolveIptablesLooksOnPath(t *testing.T) {
	root := tree(t, [][2]string{
		{"bin/xtables-legacy-multi", ""},
		{"bin/iptables", "xtables-legacy-multi"},
	})
	t.Setenv("PATH", filepath.Join(root, "bin"))
	if got, err := ResolveIptables(); err != nil || got != BackendLegacy {
		t.Errorf("got %q, %v", got, err)
	}
	t.Setenv("PATH", t.TempDir())
	if _, err := ResolveIptables(); !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), "no iptables command on PATH") {
		t.Errorf("%v", err)
	}
}

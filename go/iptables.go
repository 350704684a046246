package jumpset

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// ResolveIptables finds which backend the node's `iptables` command uses, without
// running it: the `iptables` on PATH is followed through its symbolic links, one link at
// a time, and the first name that says its mode decides:
//
//	iptables-nft, xtables-nft-multi              -> BackendNft
//	iptables-legacy, xtables-legacy-multi,
//	xtables-multi (iptables before 1.8)          -> BackendLegacy
//
// so Debian's /usr/sbin/iptables -> /etc/alternatives/iptables ->
// /usr/sbin/iptables-nft -> xtables-nft-multi is nft. The limits: a command that is not
// a link to one of those — a wrapper script (kubernetes-sigs/iptables-wrappers before its
// first run, RHEL's alternatives pointing at a script), a copy or hard link of the
// binary, busybox — says nothing by its name, and that is an error (ErrConfig) rather
// than a guess; pass BackendNft, BackendLegacy or BackendAuto (jumpset's own detection of
// what the kernel holds) then. It reads the PATH of this process, which may differ from
// the one of the agent's iptables calls it replaces.
func ResolveIptables() (Backend, error) {
	path, err := exec.LookPath("iptables")
	if err != nil {
		return "", iptablesError(fmt.Sprintf("no iptables command on PATH (%v)", err))
	}
	return resolveIptablesAt(path)
}

// resolveIptablesAt follows path's links as ResolveIptables describes.
func resolveIptablesAt(path string) (Backend, error) {
	seen := []string{path}
	for hop := 0; ; hop++ {
		if b, ok := modeOfName(filepath.Base(path)); ok {
			return b, nil
		}
		if hop == 40 {
			return "", iptablesError("too many symbolic links: " + strings.Join(seen, " -> "))
		}
		target, err := os.Readlink(path)
		if err != nil {
			if fi, serr := os.Lstat(path); serr == nil && fi.Mode()&os.ModeSymlink == 0 {
				return "", iptablesError(fmt.Sprintf("%s is not a link to xtables-nft-multi or xtables-legacy-multi, so its name does not say whether it is iptables-nft or iptables-legacy", strings.Join(seen, " -> ")))
			}
			return "", iptablesError(fmt.Sprintf("cannot follow %s: %v", strings.Join(seen, " -> "), err))
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		path = target
		seen = append(seen, path)
	}
}

// modeOfName is the backend a binary's name says, if it says one.
func modeOfName(name string) (Backend, bool) {
	switch name {
	case "iptables-nft", "xtables-nft-multi":
		return BackendNft, true
	case "iptables-legacy", "xtables-legacy-multi", "xtables-multi":
		return BackendLegacy, true
	}
	return "", false
}

func iptablesError(why string) *Error {
	e := configError("backend", "\"iptables\": "+why+"; use \"nft\", \"legacy\" or \"auto\"")
	e.Op = "resolve iptables"
	return e
}

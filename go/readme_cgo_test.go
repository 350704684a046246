//go:build cgo

package jumpset_test

import (
	"context"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"
)

// As root: in a network namespace of its own (the thread is never unlocked, so Go ends
// it with the test), the README's snippet converges the broken seed chain in-process.
func TestTheReadmeSnippetConvergesTheBrokenChain(t *testing.T) {
	runtime.LockOSThread()
	if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
		t.Fatalf("cannot create a network namespace (the tests need root): %v", err)
	}
	seed, err := os.ReadFile("../crates/jumpset/testdata/harvester-broken.rules")
	if err != nil {
		t.Fatal(err)
	}
	restore := exec.Command("iptables-nft-restore")
	restore.Stdin = strings.NewReader(string(seed))
	if out, err := restore.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}

	if _, err := newClient(true); err != nil {
		t.Fatalf("the socket client is made without dialling: %v", err)
	}
	client, err := newClient(false)
	if err != nil {
		t.Fatal(err)
	}
	if err := ensureNatPreroutingRule(context.Background(), client); err != nil {
		t.Fatal(err)
	}
	healthy, err := os.ReadFile("../crates/jumpset/testdata/harvester-healthy.rules")
	if err != nil {
		t.Fatal(err)
	}
	saved, err := exec.Command("iptables-nft-save", "-t", "nat").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := chainLines(string(saved)), chainLines(string(healthy)); got != want {
		t.Errorf("chain\n%s\nwant\n%s", got, want)
	}
}

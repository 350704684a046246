//go:build cgo

package jumpset

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// These tests need root: each makes a network namespace of its own and never touches
// the machine's. They run the real iptables-nft / nft as the other agents and oracles.

// inNewNetns moves the test's goroutine, locked to its OS thread, into a fresh network
// namespace. The thread is never unlocked: Go ends it with the test's goroutine, so no
// other goroutine ever runs in the namespace. Programs started from the test inherit it.
func inNewNetns(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
		t.Fatalf("cannot create a network namespace (the tests need root): %v", err)
	}
}

// sh runs a command (in the calling thread's namespace) and returns its output.
func sh(t *testing.T, stdin string, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func seed(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "crates", "jumpset", "testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// savedChain is the `-A PREROUTING` lines of iptables-nft-save.
func savedChain(t *testing.T) []string {
	var out []string
	for _, l := range strings.Split(sh(t, "", "iptables-nft-save", "-t", "nat"), "\n") {
		if strings.HasPrefix(l, "-A PREROUTING ") {
			out = append(out, l)
		}
	}
	return out
}

// nftHandle is the handle `nft -a` lists for the rule jumping to target.
func nftHandle(t *testing.T, target string) string {
	listed := sh(t, "", "nft", "-a", "list", "chain", "ip", "nat", "PREROUTING")
	m := regexp.MustCompile(`jump ` + regexp.QuoteMeta(target) + ` # handle (\d+)`).FindStringSubmatch(listed)
	if m == nil {
		t.Fatalf("no rule jumping to %s in\n%s", target, listed)
	}
	return m[1]
}

// agentSpec is the Harvester spec plus a jump the seed chain lacks, so that a reconcile
// both deletes and inserts.
func agentSpec() Spec {
	s := harvesterSpec()
	s.Chains[0].Jumps = append(s.Chains[0].Jumps, Jump{
		Target: "AGENT-PREROUTING", Comment: "agent prerouting rules", After: []string{"KUBE-SERVICES"},
	})
	return s
}

func indexOf(lines []string, part string) int {
	for i, l := range lines {
		if strings.Contains(l, part) {
			return i
		}
	}
	return -1
}

func TestInProcessConvergesTheBrokenSeedChain(t *testing.T) {
	inNewNetns(t)
	sh(t, seed(t, "harvester-broken.rules"), "iptables-nft-restore")
	// Every report the library hands out is read with no field left over.
	var raws [][]byte
	rawReport = func(_ string, raw []byte) { raws = append(raws, raw) }
	defer func() { rawReport = nil }()

	c, err := NewInProcess()
	if err != nil {
		t.Fatal(err)
	}
	if v := c.LibraryVersion(); v == "" {
		t.Error("no library version")
	}
	ctx := context.Background()
	spec := agentSpec()

	check, err := c.Check(ctx, spec)
	if err != nil {
		t.Fatalf("drift is not an error: %v", err)
	}
	if check.Converged() || len(check.Drift()) != 1 || check.Chains[0].Verdict != Drift || check.ExitCode() != 1 {
		t.Fatalf("drift: %+v", check)
	}

	r, err := c.Reconcile(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	ch := r.Chains[0]
	if !ch.Committed || ch.Backend != "nft" || ch.Family != FamilyIP || len(ch.Ops) != 3 {
		t.Fatalf("%+v", ch)
	}
	ins := r.Inserted()
	if len(ins) != 1 || ins[0].Comment != "agent prerouting rules" {
		t.Fatalf("inserts %+v", ins)
	}
	// The handle the report gives is the one nft lists for the new rule.
	if got, want := ins[0].Handle, nftHandle(t, "AGENT-PREROUTING"); want != strconv.FormatUint(got, 10) {
		t.Errorf("report says handle %d, nft -a lists %s", got, want)
	}

	// The chain is the healthy one plus the agent's jump after kube-proxy's.
	chain := savedChain(t)
	healthy := []string{}
	for _, l := range strings.Split(seed(t, "harvester-healthy.rules"), "\n") {
		if strings.HasPrefix(l, "-A PREROUTING ") {
			healthy = append(healthy, l)
		}
	}
	var without []string
	for _, l := range chain {
		if !strings.Contains(l, "AGENT-PREROUTING") {
			without = append(without, l)
		}
	}
	if strings.Join(without, "\n") != strings.Join(healthy, "\n") {
		t.Errorf("chain\n%s\nwant the healthy one\n%s", strings.Join(chain, "\n"), strings.Join(healthy, "\n"))
	}
	if indexOf(chain, "AGENT-PREROUTING") < indexOf(chain, "KUBE-SERVICES") {
		t.Errorf("the agent's jump is not after KUBE-SERVICES:\n%s", strings.Join(chain, "\n"))
	}

	check, err = c.Check(ctx, spec)
	if err != nil || !check.Converged() || check.Chains[0].Verdict != Converged || check.ExitCode() != 0 {
		t.Errorf("converged: %+v, %v", check, err)
	}
	st, err := c.Status(ctx, spec)
	if err != nil || !st.InOrder() {
		t.Fatalf("status: %+v, %v", st, err)
	}
	found := false
	for _, rule := range st.Chains[0].Rules {
		if rule.Handle == ins[0].Handle {
			found = rule.Target == "AGENT-PREROUTING" && rule.Owner == "jumpset" && rule.Role == "owned"
		}
	}
	if !found {
		t.Errorf("status shows no owned rule with handle %d: %+v", ins[0].Handle, st.Chains[0].Rules)
	}

	// A second reconcile writes nothing.
	r, err = c.Reconcile(ctx, spec)
	if err != nil || r.Chains[0].Committed || len(r.Chains[0].Ops) != 0 {
		t.Errorf("second reconcile: %+v, %v", r, err)
	}

	// Release with removal takes the jumps out, and only them.
	r, err = c.Release(ctx, spec, true)
	if err != nil || !r.Chains[0].Committed {
		t.Fatalf("release: %+v, %v", r, err)
	}
	if chain := savedChain(t); indexOf(chain, "OVN-PREROUTING") >= 0 || indexOf(chain, "AGENT-PREROUTING") >= 0 || len(chain) != 3 {
		t.Errorf("after release:\n%s", strings.Join(chain, "\n"))
	}
	if r, err := c.Release(ctx, spec, false); r != nil || err != nil {
		t.Errorf("release without removal does nothing in-process: %v, %v", r, err)
	}

	if len(raws) < 5 {
		t.Fatalf("saw %d reports", len(raws))
	}
	for _, raw := range raws {
		switch {
		case strings.Contains(string(raw), `"verdict"`):
			strictly(t, raw, func() interface{} { return new(ChainCheck) })
		case strings.Contains(string(raw), `"committed"`):
			strictly(t, raw, func() interface{} { return new(ChainApply) })
		default:
			strictly(t, raw, func() interface{} { return new(ChainStatus) })
		}
	}
}

func TestInProcessErrorsAreTyped(t *testing.T) {
	c, _ := NewInProcess()
	ctx := context.Background()

	// A bad spec: ErrConfig, with the key in the spec's own spelling.
	bad := harvesterSpec()
	bad.Chains[0].Jumps[0].After = []string{"OVN-PREROUTING"}
	_, err := c.Reconcile(ctx, bad)
	var e *Error
	if !errors.Is(err, ErrConfig) || !errors.As(err, &e) {
		t.Fatalf("%v", err)
	}
	if e.Key != "chains[0].jumps[0].after" || e.ExitCode != 2 || e.Op != "reconcile" || !strings.Contains(e.Message, "itself") {
		t.Errorf("%#v", e)
	}
	bad = harvesterSpec()
	bad.Chains[0].Table = "security"
	if _, err := c.Check(ctx, bad); !errors.As(err, &e) || e.Key != "chains[0].table" {
		t.Errorf("%v", err)
	}
	if _, err := c.Status(ctx, Spec{Chains: []Chain{{Table: "nat", Chain: "PREROUTING"}}}); !errors.As(err, &e) || e.Key != "chains[0]" || !strings.Contains(e.Message, "declares no jumps") {
		t.Errorf("%v", err)
	}

	inNewNetns(t)
	// A conflict: kube-proxy's jump ahead of Calico's leaves no place after Calico's and
	// before kube-proxy's. The jump is placed as close as it can be; the error says so
	// and comes with the report.
	sh(t, `*nat
:cali-PREROUTING - [0:0]
:OVN-PREROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING
-A PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING
-A PREROUTING -m comment --comment "kube-ovn prerouting rules" -j OVN-PREROUTING
COMMIT
`, "iptables-nft-restore")
	r, err := c.Reconcile(ctx, harvesterSpec())
	if !errors.Is(err, ErrConflict) || !errors.As(err, &e) || r == nil {
		t.Fatalf("%+v, %v", r, err)
	}
	if e.ExitCode != 5 || len(e.Conflicts) != 1 || e.Conflicts[0].Unmet == "" || r.ExitCode() != 5 || !r.Chains[0].Committed {
		t.Errorf("%#v\n%+v", e, r)
	}
	if chain := savedChain(t); len(chain) != 3 || strings.Count(strings.Join(chain, "\n"), "OVN-PREROUTING") != 1 {
		t.Errorf("one copy left, nothing foreign lost:\n%s", strings.Join(chain, "\n"))
	}
	// Checked again: as converged as it can be — a verdict, not an error.
	check, err := c.Check(ctx, harvesterSpec())
	if err != nil || check.Chains[0].Verdict != ConflictVerdict || !check.Converged() || check.ExitCode() != 5 {
		t.Errorf("%+v, %v", check, err)
	}

	// A kernel refusal: the target chain is missing and may not be created.
	missing := Spec{Backend: BackendNft, Chains: []Chain{{Table: "nat", Chain: "OUTPUT", Jumps: []Jump{
		{Target: "NOT-THERE", Comment: "not there", CreateChain: Bool(false)},
	}}}}
	r, err = c.Reconcile(ctx, missing)
	if !errors.Is(err, ErrKernel) || errors.Is(err, ErrConflict) || r == nil || r.Chains[0].Err == nil {
		t.Fatalf("%+v, %v", r, err)
	}
	if !strings.Contains(err.Error(), "NOT-THERE does not exist") {
		t.Errorf("%v", err)
	}
}

// helperEnv runs TestHelperWithoutNetAdmin as the body of a subprocess.
const helperEnv = "JUMPSET_GO_TEST_HELPER"

func TestInProcessWithoutNetAdminIsAPrivilegeError(t *testing.T) {
	inNewNetns(t)
	sh(t, seed(t, "harvester-broken.rules"), "iptables-nft-restore")
	before := savedChain(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("setpriv", "--inh-caps=-net_admin", "--bounding-set=-net_admin",
		self, "-test.run=^TestHelperWithoutNetAdmin$", "-test.v")
	cmd.Env = append(os.Environ(), helperEnv+"=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "privilege error: jumpset reconcile:") || !strings.Contains(string(out), "CAP_NET_ADMIN") {
		t.Errorf("%s", out)
	}
	if strings.Join(savedChain(t), "\n") != strings.Join(before, "\n") {
		t.Error("something was written without CAP_NET_ADMIN")
	}
}

// TestHelperWithoutNetAdmin is the subprocess of TestInProcessWithoutNetAdminIsAPrivilegeError
// (run under setpriv without CAP_NET_ADMIN); on its own it does nothing.
func TestHelperWithoutNetAdmin(t *testing.T) {
	if os.Getenv(helperEnv) == "" {
		t.Skip("the body of a subprocess")
	}
	c, _ := NewInProcess()
	r, err := c.Reconcile(context.Background(), harvesterSpec())
	var e *Error
	if r != nil || !errors.Is(err, ErrPrivilege) || !errors.As(err, &e) || e.ExitCode != 3 {
		t.Fatalf("%+v, %#v", r, err)
	}
	t.Logf("privilege error: %v", err)
}

func TestBackendIptablesFollowsTheNodesIptables(t *testing.T) {
	inNewNetns(t)
	c, _ := NewInProcess()
	multis := map[string]string{}
	for _, mode := range []string{"nft", "legacy"} {
		multi, err := exec.LookPath("xtables-" + mode + "-multi")
		if err != nil {
			t.Fatalf("xtables-%s-multi is not installed (apt-get install iptables): %v", mode, err)
		}
		multis[mode] = multi
	}
	for _, want := range []string{"nft", "legacy"} {
		multi := multis[want]
		dir := t.TempDir()
		if err := os.Symlink(multi, filepath.Join(dir, "iptables")); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", dir)
		spec := harvesterSpec()
		spec.Backend = BackendIptables
		check, err := c.Check(context.Background(), spec)
		if err != nil || check.Chains[0].Backend != want {
			t.Errorf("iptables -> %s: %+v, %v", multi, check, err)
		}
	}
}

func TestEachCallActsInTheCallingThreadsNamespace(t *testing.T) {
	inNewNetns(t)
	sh(t, seed(t, "harvester-broken.rules"), "iptables-nft-restore")
	c, _ := NewInProcess()
	spec := harvesterSpec()
	// Another goroutine, locked to a thread in a namespace of its own: an empty chain.
	other := make(chan *CheckReport)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
			other <- nil
			return
		}
		r, _ := c.Check(context.Background(), spec)
		other <- r
	}()
	mine, err := c.Check(context.Background(), spec)
	theirs := <-other
	if err != nil || theirs == nil {
		t.Fatalf("%v, %v", err, theirs)
	}
	// Here the broken chain: duplicates to delete. There: nothing, so one insert.
	if len(mine.Chains[0].Ops) != 2 || mine.Chains[0].Ops[0].Op != "delete" {
		t.Errorf("this thread's namespace: %+v", mine.Chains[0].Ops)
	}
	if len(theirs.Chains[0].Ops) != 1 || theirs.Chains[0].Ops[0].Op != "insert" {
		t.Errorf("the other thread's namespace: %+v", theirs.Chains[0].Ops)
	}
}

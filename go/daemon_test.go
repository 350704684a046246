package jumpset_test

// The socket transport against the real `jumpset daemon` (docs/api.md), each test in a
// network namespace of its own (as root: scripts/test.sh runs these after `cargo test`,
// which builds the daemon; $JUMPSET_BIN names it, else ../target/debug/jumpset). The
// other agents' jumps (felix's, kube-proxy's, portmap's) are written by iptables-nft.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	jumpset "github.com/jumpset/jumpset/go"
)

// inNetns moves the test's goroutine, locked to its thread for good, into a new network
// namespace (Go ends the thread with the test); the programs it starts inherit it.
func inNetns(t *testing.T) {
	t.Helper()
	runtime.LockOSThread()
	if err := syscall.Unshare(syscall.CLONE_NEWNET); err != nil {
		t.Fatalf("cannot create a network namespace (the tests need root): %v", err)
	}
}

func jumpsetBin(t *testing.T) string {
	t.Helper()
	bin := os.Getenv("JUMPSET_BIN")
	if bin == "" {
		bin = "../target/debug/jumpset"
	}
	abs, err := filepath.Abs(bin)
	if err == nil {
		_, err = os.Stat(abs)
	}
	if err != nil {
		t.Fatalf("the jumpset binary (%s): %v; build it with `cargo build`, or set JUMPSET_BIN", bin, err)
	}
	return abs
}

func run(t *testing.T, stdin, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v: %s", name, args, err, out)
	}
	return string(out)
}

// targets is nat PREROUTING as iptables-nft-save lists it: each rule's jump target.
func targets(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(run(t, "", "iptables-nft-save", "-t", "nat"), "\n") {
		if strings.HasPrefix(l, "-A PREROUTING ") {
			f := strings.Fields(l)
			out = append(out, f[len(f)-1])
		}
	}
	return out
}

func waitFor(d time.Duration, f func() bool) bool {
	for end := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		if f() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

// syncBuffer collects the daemon's log.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemon is a `jumpset daemon` of one test: its directory (0755, reachable by other
// users), config, socket and state directory.
type daemon struct {
	t      *testing.T
	dir    string
	config string
	socket string
	cmd    *exec.Cmd
	log    *syncBuffer
}

// newDaemon writes a config with no chain of its own (the agents claim theirs) and
// `extra` keys of its [daemon] table.
func newDaemon(t *testing.T, extra string) *daemon {
	t.Helper()
	dir, err := os.MkdirTemp("", "jumpset-go-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &daemon{t: t, dir: dir, config: filepath.Join(dir, "jumpset.toml"), socket: filepath.Join(dir, "api.sock")}
	if err := os.Mkdir(filepath.Join(dir, "state"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf("backend = \"nft\"\n[daemon]\nmetrics_listen = \"\"\nstate_dir = %q\napi_socket = %q\n%s\n",
		filepath.Join(dir, "state"), d.socket, extra)
	if err := os.WriteFile(d.config, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	return d
}

// start runs the daemon (in the calling thread's namespace) until it serves its API.
func (d *daemon) start() {
	d.t.Helper()
	d.log = &syncBuffer{}
	d.cmd = exec.Command(jumpsetBin(d.t), "daemon", "--config", d.config)
	d.cmd.Stderr = d.log
	d.cmd.Env = append(os.Environ(), "JUMPSET_LOG=info")
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	cmd := d.cmd
	d.t.Cleanup(func() { _ = cmd.Process.Kill(); _, _ = cmd.Process.Wait() })
	if !waitFor(15*time.Second, func() bool { return strings.Contains(d.log.String(), "serving the local API") }) {
		d.t.Fatalf("the daemon does not serve its API:\n%s", d.log)
	}
}

// stop ends it with SIGTERM (exit 0).
func (d *daemon) stop() {
	d.t.Helper()
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	if err := d.cmd.Wait(); err != nil {
		d.t.Fatalf("the daemon's exit: %v\n%s", err, d.log)
	}
}

func (d *daemon) client(agent string) *jumpset.Socket {
	d.t.Helper()
	s, err := jumpset.NewSocket(d.socket, agent)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(s.CloseIdleConnections)
	return s
}

func jump(target, comment string, after, before []string) jumpset.Spec {
	return jumpset.Spec{Chains: []jumpset.Chain{{Table: "nat", Chain: "PREROUTING",
		Jumps: []jumpset.Jump{{Target: target, Comment: comment, After: after, Before: before}}}}}
}

// The felix-like and kube-proxy-like jumps and portmap's, as iptables-nft writes them.
const foreignScene = `*nat
:PREROUTING ACCEPT [0:0]
:cali-PREROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A PREROUTING -m comment --comment "cali:6gwbT8clXdHdC1b1" -j cali-PREROUTING
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
COMMIT
`

func TestTwoAgentsThroughTheDaemonConvergeAreCheckedAgainstEachOtherAndOutliveARestart(t *testing.T) {
	inNetns(t)
	run(t, foreignScene, "iptables-nft-restore")
	d := newDaemon(t, "")
	d.start()
	ctx := context.Background()
	ovn := jump("OVN-PREROUTING", "kube-ovn prerouting rules", []string{"cali-PREROUTING"}, []string{"MESH-PREROUTING"})
	mesh := jump("MESH-PREROUTING", "mesh prerouting", []string{"OVN-PREROUTING"}, []string{"KUBE-SERVICES"})
	kubeOVN, meshd := d.client("kube-ovn"), d.client("meshd")

	// meshd first (Kube-OVN's jump is not there yet), then Kube-OVN between Calico and meshd.
	for _, c := range []struct {
		client *jumpset.Socket
		spec   jumpset.Spec
	}{{meshd, mesh}, {kubeOVN, ovn}} {
		r, err := c.client.Reconcile(ctx, c.spec)
		if err != nil {
			t.Fatalf("%s: %v\n%s", c.client.Agent(), err, d.log)
		}
		if ins := r.Inserted(); len(ins) != 1 || ins[0].Handle == 0 {
			t.Errorf("%s: the insert and its handle: %+v", c.client.Agent(), ins)
		}
	}
	want := []string{"cali-PREROUTING", "OVN-PREROUTING", "MESH-PREROUTING", "KUBE-SERVICES", "CNI-HOSTPORT-DNAT"}
	if got := targets(t); !reflect.DeepEqual(got, want) {
		t.Fatalf("chain %v, want %v\n%s", got, want, d.log)
	}
	check, err := kubeOVN.Check(ctx, jumpset.Spec{})
	if err != nil || !check.Converged() {
		t.Errorf("check: %+v, %v", check, err)
	}
	status, err := meshd.Status(ctx, jumpset.Spec{})
	if err != nil || len(status.Chains) != 1 {
		t.Fatalf("status: %+v, %v", status, err)
	}
	owners := map[string]string{}
	for _, r := range status.Chains[0].Rules {
		if r.DeclaredBy != nil {
			owners[r.Target] = *r.DeclaredBy
		}
	}
	if owners["OVN-PREROUTING"] != "kube-ovn" || owners["MESH-PREROUTING"] != "meshd" || owners["KUBE-SERVICES"] != "" {
		t.Errorf("declared by: %v", owners)
	}

	// A claim that closes a cycle with theirs: 409 naming another agent, nothing written.
	gen := run(t, "", "nft", "-a", "list", "chain", "ip", "nat", "PREROUTING")
	bad := jump("BAD-PREROUTING", "bad", []string{"MESH-PREROUTING"}, []string{"OVN-PREROUTING"})
	_, err = d.client("bad").Reconcile(ctx, bad)
	var e *jumpset.Error
	if !errors.Is(err, jumpset.ErrConflict) || !errors.As(err, &e) || e.HTTPStatus != 409 {
		t.Fatalf("a contradicting claim: %v", err)
	}
	if e.ConflictsWith != "agent:meshd" && e.ConflictsWith != "agent:kube-ovn" {
		t.Errorf("names the other agent: %q (%v)", e.ConflictsWith, err)
	}
	if e.Constraint != "chains[0].jumps[0].after" && e.Constraint != "chains[0].jumps[0].before" || len(e.Cycle) < 3 {
		t.Errorf("the constraint and the cycle: %q %v", e.Constraint, e.Cycle)
	}
	if _, err := d.client("bad").Claim(ctx); !errors.Is(err, jumpset.ErrNotFound) {
		t.Errorf("the refused claim is not stored: %v", err)
	}
	if now := run(t, "", "nft", "-a", "list", "chain", "ip", "nat", "PREROUTING"); now != gen {
		t.Errorf("the refused claim changed the chain:\n%s\n%s", gen, now)
	}

	// The claims are kept (0600) and a restarted daemon enforces them.
	for _, a := range []string{"kube-ovn", "meshd"} {
		st, err := os.Stat(filepath.Join(d.dir, "state", "claims", a+".json"))
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Errorf("%s's claim: %v %v", a, st, err)
		}
	}
	d.stop()
	if _, err := os.Stat(d.socket); !os.IsNotExist(err) {
		t.Errorf("the socket is left behind: %v", err)
	}
	run(t, "", "iptables-nft", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "kube-ovn prerouting rules", "-j", "OVN-PREROUTING")
	run(t, "", "iptables-nft", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment", "mesh prerouting", "-j", "MESH-PREROUTING")
	d.start()
	if !waitFor(5*time.Second, func() bool { return reflect.DeepEqual(targets(t), want) }) {
		t.Fatalf("after the restart: %v\n%s", targets(t), d.log)
	}
	claim, err := d.client("kube-ovn").Claim(ctx)
	if err != nil || len(claim.Chains) != 1 || claim.Chains[0].Jumps[0].Target != "OVN-PREROUTING" {
		t.Errorf("the claim read back: %+v, %v", claim, err)
	}
	// Handed back with removal: gone from the kernel, and from the daemon.
	if r, err := d.client("meshd").Release(ctx, jumpset.Spec{}, true); err != nil || r == nil {
		t.Errorf("release: %+v %v", r, err)
	}
	if got := targets(t); !reflect.DeepEqual(got, []string{"cali-PREROUTING", "OVN-PREROUTING", "KUBE-SERVICES", "CNI-HOSTPORT-DNAT"}) {
		t.Errorf("after the release: %v", got)
	}
}

// get is one request to the daemon's socket: the status and the body.
func get(socket, method, path string) (int, string, error) {
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", socket)
	}}}
	req, err := http.NewRequest(method, "http://jumpset"+path, nil)
	if err != nil {
		return 0, "", err
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestHelperClient is not a test: it is the client the other tests run as another user
// (their binary copied where that user can run it). It asks the daemon for its chains
// and prints what came back.
func TestHelperClient(t *testing.T) {
	socket := os.Getenv("JUMPSET_HELPER_SOCKET")
	if socket == "" {
		return
	}
	s, err := jumpset.NewSocket(socket, "someone")
	if err != nil {
		fmt.Println("result=error", err)
		return
	}
	_, err = s.Status(context.Background(), jumpset.Spec{})
	var e *jumpset.Error
	switch {
	case err == nil:
		fmt.Println("result=ok")
	case errors.Is(err, jumpset.ErrPrivilege) && errors.As(err, &e):
		fmt.Printf("result=refused %d %s\n", e.HTTPStatus, e.Message)
	default:
		fmt.Println("result=error", err)
	}
}

func TestACallerOfAnotherUidIsRefusedUnlessInTheGroup(t *testing.T) {
	inNetns(t)
	run(t, foreignScene, "iptables-nft-restore")
	d := newDaemon(t, "api_group = 4242")
	d.start()
	// The socket is 0660 (api_group is set), in a group nobody is in here: open the file
	// modes so that the daemon's own check is what decides.
	if err := os.Chmod(d.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	helper := filepath.Join(d.dir, "client.test")
	data, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(helper, data, 0o755); err != nil {
		t.Fatal(err)
	}
	asUser := func(groups []uint32) string {
		cmd := exec.Command(helper, "-test.run=^TestHelperClient$")
		cmd.Env = append(os.Environ(), "JUMPSET_HELPER_SOCKET="+d.socket)
		cmd.Dir = d.dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: groups}}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("the helper as uid 65534: %v: %s", err, out)
		}
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, "result=") {
				return strings.TrimPrefix(l, "result=")
			}
		}
		t.Fatalf("no result from the helper: %s", out)
		return ""
	}
	if got := asUser([]uint32{}); !strings.HasPrefix(got, "refused 403") || !strings.Contains(got, "uid 65534") {
		t.Errorf("uid 65534 without the group: %s", got)
	}
	if got := asUser([]uint32{4242}); got != "ok" {
		t.Errorf("uid 65534 in group 4242: %s\n%s", got, d.log)
	}
	if code, body, err := get(d.socket, "GET", "/v1/chains"); err != nil || code != 200 {
		t.Errorf("root: %d %s %v", code, body, err)
	}
}

func TestTheReadmeSnippetConvergesTheBrokenChainThroughTheDaemon(t *testing.T) {
	inNetns(t)
	seed, err := os.ReadFile("../crates/jumpset/testdata/harvester-broken.rules")
	if err != nil {
		t.Fatal(err)
	}
	run(t, string(seed), "iptables-nft-restore")
	d := newDaemon(t, "")
	d.start()
	t.Setenv(jumpset.SocketEnv, d.socket)
	client, err := newClient(true)
	if err != nil {
		t.Fatal(err)
	}
	if err := ensureNatPreroutingRule(context.Background(), client); err != nil {
		t.Fatalf("%v\n%s", err, d.log)
	}
	healthy, err := os.ReadFile("../crates/jumpset/testdata/harvester-healthy.rules")
	if err != nil {
		t.Fatal(err)
	}
	saved := run(t, "", "iptables-nft-save", "-t", "nat")
	if got, want := chainLines(saved), chainLines(string(healthy)); got != want {
		t.Errorf("chain\n%s\nwant\n%s", got, want)
	}
	var state map[string]interface{}
	code, body, err := get(d.socket, "GET", "/v1/state")
	if err != nil || code != 200 || json.Unmarshal([]byte(body), &state) != nil || state["ready"] != true {
		t.Errorf("state: %d %s %v", code, body, err)
	}
}

// chainLines is the `-A PREROUTING` lines of an iptables-save text.
func chainLines(text string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "-A PREROUTING ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

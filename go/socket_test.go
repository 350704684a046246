package jumpset

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// fakeDaemon serves the local API (docs/api.md) on a Unix socket from canned replies,
// and records what it was sent.
type fakeDaemon struct {
	path string
	srv  *httptest.Server

	mu       sync.Mutex
	requests []string          // "METHOD /path?query"
	bodies   [][]byte          // PUT bodies
	claims   map[string][]byte // agent -> stored chains
	putReply func(agent string, body []byte) (int, interface{})
}

func newFakeDaemon(t *testing.T) *fakeDaemon {
	t.Helper()
	d := &fakeDaemon{path: filepath.Join(t.TempDir(), "jumpset.sock"), claims: map[string][]byte{}}
	l, err := net.Listen("unix", d.path)
	if err != nil {
		t.Fatal(err)
	}
	d.srv = httptest.NewUnstartedServer(http.HandlerFunc(d.serve))
	d.srv.Listener = l
	d.srv.Start()
	t.Cleanup(d.srv.Close)
	return d
}

func reply(w http.ResponseWriter, status int, body interface{}) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	switch b := body.(type) {
	case []byte:
		_, _ = w.Write(b)
	default:
		_ = json.NewEncoder(w).Encode(b)
	}
}

func (d *fakeDaemon) serve(w http.ResponseWriter, r *http.Request) {
	d.mu.Lock()
	defer d.mu.Unlock()
	q := ""
	if r.URL.RawQuery != "" {
		q = "?" + r.URL.RawQuery
	}
	d.requests = append(d.requests, r.Method+" "+r.URL.Path+q)
	if r.Header.Get("Accept") != "application/json" {
		reply(w, 400, map[string]interface{}{"error": "Accept is not application/json", "exit_code": 2})
		return
	}
	agent := strings.TrimPrefix(r.URL.Path, "/v1/agents/")
	isAgent := agent != r.URL.Path
	switch {
	case r.URL.Path == "/v1/chains" && r.Method == "GET":
		reply(w, 200, d.fixture("status-chains.json"))
	case r.URL.Path == "/v1/check" && r.Method == "GET":
		reply(w, 200, d.fixture("check-families.json"))
	case isAgent && agent == "intruder":
		reply(w, 403, map[string]interface{}{"error": "uid 1000 is not root and not in group jumpset", "exit_code": 3})
	case isAgent && r.Method == "PUT":
		if r.Header.Get("Content-Type") != "application/json" {
			reply(w, 415, map[string]interface{}{"error": "not JSON"})
			return
		}
		body, _ := io.ReadAll(r.Body)
		d.bodies = append(d.bodies, body)
		status, out := d.putReply(agent, body)
		if status == 200 || status == 202 {
			var claim struct {
				Chains json.RawMessage `json:"chains"`
			}
			_ = json.Unmarshal(body, &claim)
			d.claims[agent] = claim.Chains
		}
		reply(w, status, out)
	case isAgent && r.Method == "GET":
		c, ok := d.claims[agent]
		if !ok {
			reply(w, 404, map[string]interface{}{"error": "agent " + agent + " holds no claim"})
			return
		}
		reply(w, 200, map[string]interface{}{"agent": agent, "chains": json.RawMessage(c)})
	case isAgent && r.Method == "DELETE":
		if _, ok := d.claims[agent]; !ok {
			reply(w, 404, map[string]interface{}{"error": "agent " + agent + " holds no claim"})
			return
		}
		delete(d.claims, agent)
		if r.URL.Query().Get("remove") == "true" {
			reply(w, 200, map[string]interface{}{"agent": agent, "removed": true, "report": json.RawMessage(d.fixture("apply.json"))})
		} else {
			reply(w, 200, map[string]interface{}{"agent": agent, "removed": false, "report": nil})
		}
	default:
		reply(w, 404, map[string]interface{}{"error": "no route " + r.URL.Path})
	}
}

func (d *fakeDaemon) fixture(name string) []byte {
	b, err := readFixture(name)
	if err != nil {
		panic(err)
	}
	return b
}

func readFixture(name string) ([]byte, error) {
	return os.ReadFile(filepath.Join("testdata", name))
}

func (d *fakeDaemon) seen() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.requests...)
}

func okReport(name string) func(string, []byte) (int, interface{}) {
	return func(agent string, _ []byte) (int, interface{}) {
		b, _ := readFixture(name)
		return 200, map[string]interface{}{"agent": agent, "report": json.RawMessage(b)}
	}
}

func TestSocketReconcileSendsTheClaimAndReadsTheReport(t *testing.T) {
	d := newFakeDaemon(t)
	d.putReply = okReport("apply.json")
	s, err := NewSocket(d.path, "kube-ovn")
	if err != nil {
		t.Fatal(err)
	}
	spec := harvesterSpec()
	spec.Families = []Family{FamilyIP6} // the daemon's business: not sent
	r, err := s.Reconcile(context.Background(), spec)
	if err != nil {
		t.Fatal(err)
	}
	if got := d.seen(); !reflect.DeepEqual(got, []string{"PUT /v1/agents/kube-ovn"}) {
		t.Errorf("requests %v", got)
	}
	want := `{"chains":[{"table":"nat","chain":"PREROUTING","jumps":[{"target":"OVN-PREROUTING","comment":"kube-ovn prerouting rules","after":["cali-PREROUTING"],"before":["KUBE-SERVICES","CNI-HOSTPORT-DNAT"]}]}]}`
	if string(d.bodies[0]) != want {
		t.Errorf("body\n got %s\nwant %s", d.bodies[0], want)
	}
	if ins := r.Inserted(); len(ins) != 1 || ins[0].Handle == 0 {
		t.Errorf("the insert's handle: %+v", ins)
	}
	// The claim is stored and read back in the body's shape.
	claim, err := s.Claim(context.Background())
	if err != nil || !reflect.DeepEqual(claim.Chains, spec.Chains) {
		t.Errorf("claim %+v, %v", claim, err)
	}
	// Released without removal: no report; with removal: the cleanup's.
	if r, err := s.Release(context.Background(), spec, false); r != nil || err != nil {
		t.Errorf("release: %v, %v", r, err)
	}
	if _, err := s.Claim(context.Background()); !errors.Is(err, ErrNotFound) {
		t.Errorf("after release: %v", err)
	}
	if _, err := s.Release(context.Background(), spec, true); !errors.Is(err, ErrNotFound) {
		t.Errorf("nothing to release: %v", err)
	}
	_, _ = s.Reconcile(context.Background(), spec)
	if r, err := s.Release(context.Background(), spec, true); err != nil || r == nil || len(r.Chains) != 1 {
		t.Errorf("release with removal: %+v, %v", r, err)
	}
	got := d.seen()
	if want := "DELETE /v1/agents/kube-ovn?remove=true"; got[len(got)-1] != want {
		t.Errorf("last request %q, want %q", got[len(got)-1], want)
	}
}

func TestSocketConflictsAndFailuresInTheReportAreErrorsWithTheReport(t *testing.T) {
	d := newFakeDaemon(t)
	s, _ := NewSocket(d.path, "kube-ovn")
	d.putReply = okReport("apply-conflict.json")
	r, err := s.Reconcile(context.Background(), harvesterSpec())
	var e *Error
	if r == nil || !errors.Is(err, ErrConflict) || !errors.As(err, &e) || len(e.Conflicts) != 1 || e.HTTPStatus != 0 {
		t.Errorf("%+v, %#v", r, err)
	}
	d.putReply = okReport("apply-family-error.json")
	r, err = s.Reconcile(context.Background(), harvesterSpec())
	if r == nil || !errors.Is(err, ErrKernel) || r.Chains[1].Err == nil {
		t.Errorf("%+v, %v", r, err)
	}
}

func TestSocketRefusalsAreTypedErrors(t *testing.T) {
	d := newFakeDaemon(t)
	s, _ := NewSocket(d.path, "kube-ovn")
	for _, c := range []struct {
		status int
		body   string
		kind   error
		check  func(*Error) bool
	}{
		{409, `{"error": "the jump to OVN-PREROUTING after cali-PREROUTING contradicts calico's claim", "exit_code": 5, "constraint": "chains[0].jumps[0].after", "conflicts_with": "agent:calico", "cycle": ["OVN-PREROUTING", "cali-PREROUTING", "OVN-PREROUTING"]}`,
			ErrConflict, func(e *Error) bool {
				return e.ConflictsWith == "agent:calico" && e.Constraint == "chains[0].jumps[0].after" && len(e.Cycle) == 3 && e.ExitCode == 5
			}},
		{400, `{"error": "config: chains[0].jumps[0].after: the jump to X cannot be placed after itself", "exit_code": 2, "key": "chains[0].jumps[0].after", "line": null}`,
			ErrConfig, func(e *Error) bool { return e.Key == "chains[0].jumps[0].after" && e.Line == 0 && e.ExitCode == 2 }},
		{400, `{"error": "config: chains[0].jumps[0].after: invalid type", "exit_code": 2, "key": "chains[0].jumps[0].after", "line": 3}`,
			ErrConfig, func(e *Error) bool { return e.Line == 3 }},
		{202, `{"agent": "kube-ovn", "state": "paused", "reason": "paused by jumpset pause"}`,
			ErrHeld, func(e *Error) bool {
				return e.State == "paused" && e.Reason == "paused by jumpset pause" && strings.Contains(e.Message, "paused")
			}},
		{503, `{"error": "starting"}`, ErrUnavailable, func(e *Error) bool { return e.Message == "starting" }},
		{500, `{"error": "cannot write /var/lib/jumpset/claims/kube-ovn.json"}`, ErrInternal, func(e *Error) bool { return true }},
		{500, `not json`, ErrInternal, func(e *Error) bool { return strings.Contains(e.Message, "not json") }},
	} {
		c := c
		d.putReply = func(string, []byte) (int, interface{}) { return c.status, []byte(c.body) }
		r, err := s.Reconcile(context.Background(), harvesterSpec())
		var e *Error
		if r != nil || !errors.Is(err, c.kind) || !errors.As(err, &e) || e.HTTPStatus != c.status || !c.check(e) {
			t.Errorf("%d %s: got %v, %#v", c.status, c.body, r, err)
		}
	}
	intruder, _ := NewSocket(d.path, "intruder")
	if _, err := intruder.Reconcile(context.Background(), harvesterSpec()); !errors.Is(err, ErrPrivilege) {
		t.Errorf("403: %v", err)
	}
}

func TestSocketCheckAndStatusAreTheDaemonsOfTheSpecsChains(t *testing.T) {
	d := newFakeDaemon(t)
	s, _ := NewSocket(d.path, "kube-ovn")
	c, err := s.Check(context.Background(), harvesterSpec())
	if err != nil || len(c.Chains) != 2 || c.Converged() || c.ExitCode() != 1 {
		t.Errorf("drift is a verdict: %+v, %v", c, err)
	}
	st, err := s.Status(context.Background(), Spec{})
	if err != nil || len(st.Chains) != 2 {
		t.Errorf("every chain: %+v, %v", st, err)
	}
	st, err = s.Status(context.Background(), Spec{Chains: []Chain{{Table: "nat", Chain: "OUTPUT"}}})
	if err != nil || len(st.Chains) != 1 || st.Chains[0].Chain != "OUTPUT" {
		t.Errorf("the spec's chain: %+v, %v", st, err)
	}
	if got := d.seen(); !reflect.DeepEqual(got, []string{"GET /v1/check", "GET /v1/chains", "GET /v1/chains"}) {
		t.Errorf("requests %v", got)
	}
}

func TestNoDaemonIsUnavailable(t *testing.T) {
	s, err := NewSocket(filepath.Join(t.TempDir(), "none.sock"), "kube-ovn")
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Reconcile(context.Background(), harvesterSpec())
	if !errors.Is(err, ErrUnavailable) || !errors.Is(err, syscall.ENOENT) {
		t.Errorf("%v", err)
	}
	if !strings.Contains(err.Error(), "none.sock") {
		t.Errorf("names the socket: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d := newFakeDaemon(t)
	s, _ = NewSocket(d.path, "kube-ovn")
	if _, err := s.Status(ctx, Spec{}); !errors.Is(err, context.Canceled) || !errors.Is(err, ErrUnavailable) {
		t.Errorf("cancelled: %v", err)
	}
}

func TestAgentNamesAreChecked(t *testing.T) {
	for _, bad := range []string{"", "-x", "a/b", "a b", strings.Repeat("a", 64), "..", "ä"} {
		_, err := NewSocket("", bad)
		var e *Error
		if !errors.Is(err, ErrConfig) || !errors.As(err, &e) || e.Key != "agent" {
			t.Errorf("%q: %v", bad, err)
		}
	}
	t.Setenv(SocketEnv, "")
	for _, good := range []string{"kube-ovn", "calico.felix", "a", "A_1", strings.Repeat("a", 63)} {
		s, err := NewSocket("", good)
		if err != nil || s.Path() != DefaultSocket || s.Agent() != good {
			t.Errorf("%q: %v", good, err)
		}
	}
	t.Setenv(SocketEnv, "/elsewhere/jumpset.sock")
	if s, _ := NewSocket("", "kube-ovn"); s.Path() != "/elsewhere/jumpset.sock" {
		t.Errorf("$%s: %s", SocketEnv, s.Path())
	}
	if s, _ := NewSocket("/given.sock", "kube-ovn"); s.Path() != "/given.sock" {
		t.Errorf("a path given: %s", s.Path())
	}
}

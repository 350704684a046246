package jumpset

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"testing"
)

// The fixtures are what the `jumpset` command prints (testdata/capture.sh).
func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// strictly decodes every entry of a report into a fresh T, refusing unknown fields: the
// Go types mirror every field the library prints.
func strictly(t *testing.T, raw []byte, newT func() interface{}) {
	t.Helper()
	list, err := entries(raw)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) == 0 {
		t.Fatal("no entries")
	}
	for _, e := range list {
		var head entryHead
		if err := json.Unmarshal(e, &head); err != nil {
			t.Fatal(err)
		}
		if head.Error != nil {
			continue
		}
		dec := json.NewDecoder(bytes.NewReader(e))
		dec.DisallowUnknownFields()
		if err := dec.Decode(newT()); err != nil {
			t.Errorf("a field the Go type lacks: %v\n%s", err, e)
		}
	}
}

func TestTheGoTypesMirrorEveryFieldOfTheReports(t *testing.T) {
	for _, f := range []string{"apply.json", "apply-conflict.json", "apply-family-error.json"} {
		strictly(t, fixture(t, f), func() interface{} { return new(ChainApply) })
	}
	strictly(t, fixture(t, "check-families.json"), func() interface{} { return new(ChainCheck) })
	strictly(t, fixture(t, "status-chains.json"), func() interface{} { return new(ChainStatus) })
}

func TestOneChainInOneFamily(t *testing.T) {
	r, err := decodeApply("reconcile", fixture(t, "apply.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Chains) != 1 {
		t.Fatalf("%+v", r)
	}
	c := r.Chains[0]
	if c.Backend != "nft" || c.Family != FamilyIP || c.Table != "nat" || c.Chain != "PREROUTING" || c.Err != nil {
		t.Errorf("%+v", c.ChainID)
	}
	if !c.Committed || c.GenerationAfter != c.GenerationBefore+1 {
		t.Errorf("%+v", c)
	}
	ins := r.Inserted()
	if len(ins) != 1 || ins[0].Handle == 0 || ins[0].Comment != "agent prerouting rules" || ins[0].AfterHandle == 0 {
		t.Errorf("the insert and its new handle: %+v", ins)
	}
	if d := c.Ops[0]; d.Op != "delete" || d.Reason != "duplicate" || d.Position != 1 || d.Handle == 0 {
		t.Errorf("%+v", d)
	}
	if r.ExitCode() != 0 || applyError("reconcile", r) != nil {
		t.Errorf("exit %d", r.ExitCode())
	}
}

func TestOneChainInBothFamiliesKeepsTheFamilies(t *testing.T) {
	r, err := decodeCheck("check", fixture(t, "check-families.json"))
	if err != nil {
		t.Fatal(err)
	}
	var fams []Family
	for _, c := range r.Chains {
		fams = append(fams, c.Family)
		if c.Verdict != Drift || len(c.Ops) == 0 {
			t.Errorf("%+v", c)
		}
	}
	if !reflect.DeepEqual(fams, []Family{FamilyIP, FamilyIP6}) {
		t.Errorf("families %v", fams)
	}
	if r.Converged() || len(r.Drift()) != 2 || r.ExitCode() != 1 {
		t.Errorf("drift: converged=%v drift=%d exit=%d", r.Converged(), len(r.Drift()), r.ExitCode())
	}
	if err := checkError("check", r); err != nil {
		t.Errorf("drift is a verdict, not an error: %v", err)
	}
}

func TestSeveralChainsAndAConflict(t *testing.T) {
	r, err := decodeStatus("status", fixture(t, "status-chains.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Chains) != 2 || r.Chains[0].Chain != "PREROUTING" || r.Chains[1].Chain != "OUTPUT" {
		t.Fatalf("%+v", r.Chains)
	}
	pre := r.Chains[0]
	if pre.InOrder || len(pre.Conflicts) != 1 || len(pre.Missing) != 2 || len(pre.Rules) != 2 {
		t.Errorf("%+v", pre)
	}
	k := pre.Conflicts[0]
	if k.Unmet != "after cali-PREROUTING" || len(k.Blocking) != 1 || k.Blocking[0].Target != "KUBE-SERVICES" {
		t.Errorf("%+v", k)
	}
	if rule := pre.Rules[0]; rule.Owner != "kube-proxy" || rule.Role != "foreign" || rule.Counters == nil || rule.CommentEncoding != CommentXt {
		t.Errorf("%+v", rule)
	}
	if r.InOrder() || statusError("status", r) != nil {
		t.Error("not in order, and no error")
	}
}

func TestAConflictIsAnErrorThatComesWithTheReport(t *testing.T) {
	r, err := decodeApply("reconcile", fixture(t, "apply-conflict.json"))
	if err != nil {
		t.Fatal(err)
	}
	if r.ExitCode() != 5 {
		t.Fatalf("exit %d", r.ExitCode())
	}
	err = applyError("reconcile", r)
	if !errors.Is(err, ErrConflict) || errors.Is(err, ErrKernel) {
		t.Fatalf("%v", err)
	}
	var e *Error
	if !errors.As(err, &e) || len(e.Conflicts) != 1 || e.ExitCode != 5 {
		t.Fatalf("%#v", err)
	}
	want := `ip nat PREROUTING: conflict: the jump to OVN-PREROUTING ("kube-ovn prerouting rules") cannot be placed after cali-PREROUTING without moving rules jumpset does not own: blocked by rule 1 (handle 5, -j KUBE-SERVICES)`
	if e.Message != want {
		t.Errorf("message\n got %s\nwant %s", e.Message, want)
	}
}

func TestAFailedFamilyIsAnEntryWithItsError(t *testing.T) {
	r, err := decodeApply("reconcile", fixture(t, "apply-family-error.json"))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Chains) != 2 || r.Chains[0].Err != nil || r.Chains[1].Err == nil {
		t.Fatalf("%+v", r.Chains)
	}
	if r.Chains[1].Family != FamilyIP6 || !r.Chains[0].Committed {
		t.Errorf("%+v", r.Chains)
	}
	err = applyError("reconcile", r)
	var e *Error
	if !errors.Is(err, ErrKernel) || !errors.As(err, &e) || e.ExitCode != 4 {
		t.Fatalf("%v", err)
	}
	if want := "ip6 nat PREROUTING: ip6 nat: chain ONLY-V4 does not exist"; len(e.Message) < len(want) || e.Message[:len(want)] != want {
		t.Errorf("%q", e.Message)
	}
}

func TestExitCodesRankAsTheCommandRanksThem(t *testing.T) {
	for _, c := range []struct{ a, b, want int }{
		{0, 1, 1}, {1, 5, 5}, {5, 4, 4}, {4, 3, 3}, {3, 2, 2}, {5, 1, 5}, {3, 101, 101},
		// As in the library: usage and anything unknown rank alike; the first stays.
		{2, 101, 2}, {101, 2, 101},
	} {
		if got := worse(c.a, c.b); got != c.want {
			t.Errorf("worse(%d, %d) = %d, want %d", c.a, c.b, got, c.want)
		}
	}
	for code, kind := range map[int]error{2: ErrConfig, 3: ErrPrivilege, 4: ErrKernel, 5: ErrConflict, 101: ErrInternal} {
		if !errors.Is(exitError("x", code, "m"), kind) {
			t.Errorf("exit %d is not %v", code, kind)
		}
	}
}

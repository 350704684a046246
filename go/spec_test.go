package jumpset

import (
	"errors"
	"testing"
)

func harvesterSpec() Spec {
	return Spec{
		Backend: BackendNft,
		Chains: []Chain{{
			Table: "nat",
			Chain: "PREROUTING",
			Jumps: []Jump{{
				Target:  "OVN-PREROUTING",
				Comment: "kube-ovn prerouting rules",
				After:   []string{"cali-PREROUTING"},
				Before:  []string{"KUBE-SERVICES", "CNI-HOSTPORT-DNAT"},
			}},
		}},
	}
}

func TestTheSpecIsTheConfigsJSONForm(t *testing.T) {
	s := harvesterSpec()
	s.Families = []Family{FamilyIP, FamilyIP6}
	s.Chains[0].Jumps = append(s.Chains[0].Jumps, Jump{Target: "X", Comment: "x", CreateChain: Bool(false), CommentEncoding: CommentUserdata})
	got, err := specJSON(s, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"backend":"nft","families":["ip","ip6"],"chains":[{"table":"nat","chain":"PREROUTING","jumps":[` +
		`{"target":"OVN-PREROUTING","comment":"kube-ovn prerouting rules","after":["cali-PREROUTING"],"before":["KUBE-SERVICES","CNI-HOSTPORT-DNAT"]},` +
		`{"target":"X","comment":"x","create_chain":false,"comment_encoding":"userdata"}]}]}`
	if string(got) != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
	// Defaults are left out; nil lists are empty lists.
	got, _ = specJSON(Spec{Chains: []Chain{{Table: "nat", Chain: "OUTPUT"}}}, nil)
	if want := `{"chains":[{"table":"nat","chain":"OUTPUT","jumps":[]}]}`; string(got) != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
	got, _ = specJSON(Spec{}, nil)
	if want := `{"chains":[]}`; string(got) != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
}

func TestTheClaimIsTheChainsOnly(t *testing.T) {
	s := harvesterSpec()
	s.Families = []Family{FamilyIP6}
	got, err := claimJSON(s)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"chains":[{"table":"nat","chain":"PREROUTING","jumps":[{"target":"OVN-PREROUTING","comment":"kube-ovn prerouting rules","after":["cali-PREROUTING"],"before":["KUBE-SERVICES","CNI-HOSTPORT-DNAT"]}]}]}`
	if string(got) != want {
		t.Errorf("\n got %s\nwant %s", got, want)
	}
	if got, _ := claimJSON(Spec{}); string(got) != `{"chains":[]}` {
		t.Errorf("%s", got)
	}
}

func TestBackendIptablesIsResolvedBeforeTheLibrarySeesIt(t *testing.T) {
	s := harvesterSpec()
	s.Backend = BackendIptables
	got, err := specJSON(s, func() (Backend, error) { return BackendLegacy, nil })
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"backend":"legacy",`; string(got[:len(want)]) != want {
		t.Errorf("%s", got)
	}
	_, err = specJSON(s, func() (Backend, error) { return "", iptablesError("no iptables") })
	if !errors.Is(err, ErrConfig) {
		t.Errorf("%v", err)
	}
	// Other backends are never resolved.
	s.Backend = BackendAuto
	if _, err := specJSON(s, func() (Backend, error) { panic("resolved") }); err != nil {
		t.Error(err)
	}
}

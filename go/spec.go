package jumpset

import "encoding/json"

// Backend is the kernel interface jumpset uses (in-process transport only; over the
// socket the daemon's config decides).
type Backend string

const (
	// BackendAuto detects the host's mode, as `jumpset detect` does (the default).
	BackendAuto Backend = "auto"
	// BackendNft is nf_tables over netlink (iptables-nft hosts).
	BackendNft Backend = "nft"
	// BackendLegacy is x_tables socket options (iptables-legacy hosts).
	BackendLegacy Backend = "legacy"
	// BackendIptables is whatever the node's `iptables` command is: nft or legacy, found
	// from what the `iptables` on PATH links to, without running it (ResolveIptables).
	// For agents coming from go-iptables, which runs that command.
	BackendIptables Backend = "iptables"
)

// Family is an address family of the iptables tables.
type Family string

const (
	// FamilyIP is IPv4 (iptables).
	FamilyIP Family = "ip"
	// FamilyIP6 is IPv6 (ip6tables).
	FamilyIP6 Family = "ip6"
)

// CommentEncoding is how a jump's comment is stored in the kernel.
type CommentEncoding string

const (
	// CommentXt is an xt comment match, as `iptables -m comment` writes it (the default).
	CommentXt CommentEncoding = "xt"
	// CommentUserdata is an nf_tables rule comment (rule userdata), as `nft ... comment`
	// writes it. On the legacy backend it is written as the xt match.
	CommentUserdata CommentEncoding = "userdata"
)

// Spec is the jumps to hand over: the config file's keys, typed. Its JSON is the
// config's JSON form (ffi: jumpset_new_json; the daemon's PUT body is its Chains). It is
// validated by jumpset itself, exactly as a config file: a bad one is an *Error that is
// ErrConfig, with the key path in this JSON spelling (`chains[0].jumps[1].after`).
type Spec struct {
	// Backend, in-process only (default BackendAuto).
	Backend Backend `json:"backend,omitempty"`
	// Families to manage, in-process only (nil: ip only).
	Families []Family `json:"families,omitempty"`
	// Chains are the managed built-in chains and their jumps.
	Chains []Chain `json:"chains"`
}

// Chain is one managed built-in chain and the jumps handed over in it.
type Chain struct {
	// Table is nat, filter, mangle or raw.
	Table string `json:"table"`
	// Chain is a built-in chain of that table (PREROUTING, ...).
	Chain string `json:"chain"`
	// Jumps are the jumps owned in it.
	Jumps []Jump `json:"jumps"`
}

// Jump is one owned jump: `-m comment --comment COMMENT -j TARGET`.
type Jump struct {
	// Target is the chain it jumps to.
	Target string `json:"target"`
	// Comment is the jump's identity in the chain.
	Comment string `json:"comment"`
	// After lists target chains of rules this jump must follow.
	After []string `json:"after,omitempty"`
	// Before lists target chains of rules this jump must precede.
	Before []string `json:"before,omitempty"`
	// CreateChain creates the (empty) target chain when it is missing (nil: true).
	CreateChain *bool `json:"create_chain,omitempty"`
	// CommentEncoding is how the comment is written ("": CommentXt).
	CommentEncoding CommentEncoding `json:"comment_encoding,omitempty"`
}

// Bool returns a pointer to b, for Jump.CreateChain.
func Bool(b bool) *bool { return &b }

// specJSON is the JSON form of spec for the library, with BackendIptables resolved
// (by resolve, given so that tests can stand in for the PATH lookup).
func specJSON(spec Spec, resolve func() (Backend, error)) ([]byte, error) {
	if spec.Backend == BackendIptables {
		b, err := resolve()
		if err != nil {
			return nil, err
		}
		spec.Backend = b
	}
	spec.Chains = listed(spec.Chains)
	return json.Marshal(spec)
}

// claimJSON is the body of the daemon's PUT /v1/agents/{agent}: the spec's chains.
func claimJSON(spec Spec) ([]byte, error) {
	return json.Marshal(struct {
		Chains []Chain `json:"chains"`
	}{listed(spec.Chains)})
}

// listed is chains with nil lists as empty ones: jumpset reads `null` as a wrong type,
// and an empty list gets the clearer error ("declares no jumps").
func listed(chains []Chain) []Chain {
	out := make([]Chain, len(chains))
	for i, c := range chains {
		if c.Jumps == nil {
			c.Jumps = []Jump{}
		}
		out[i] = c
	}
	return out
}

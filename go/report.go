package jumpset

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// ChainID names one chain in one family: what every report entry is about.
type ChainID struct {
	// Backend is the kernel interface used: "nft" or "legacy".
	Backend string `json:"backend"`
	// Family is the address family.
	Family Family `json:"family"`
	// Table is the table (nat, ...).
	Table string `json:"table"`
	// Chain is the built-in chain (PREROUTING, ...).
	Chain string `json:"chain"`
	// Err is this chain's failure (an *Error), nil when the operation ran. The other
	// fields of a failed entry are empty.
	Err error `json:"-"`
}

// Op is one change of a plan: the delete of a copy of an owned jump, or the insert of a
// declared jump.
type Op struct {
	// Op is "delete" or "insert".
	Op string `json:"op"`
	// Handle is the rule's kernel handle: for a delete the rule deleted; for an insert
	// the new rule's, once committed (0 in a plan or a check, and when the read-back
	// after the commit could not tell which copy is new). nf_tables: the rule handle
	// (`nft -a list chain`); legacy: the 1-based position (`iptables -D CHAIN N`) right
	// after the commit.
	Handle uint64 `json:"handle"`
	// AfterHandle is the handle of the nearest existing rule above an insert (0: none).
	AfterHandle uint64 `json:"after_handle"`
	// BeforeHandle is the handle of the nearest existing rule below an insert (0: it is
	// appended).
	BeforeHandle uint64 `json:"before_handle"`
	// Position is 1-based: for a delete in the chain as read; for an insert once the
	// deletes and the inserts before it are done.
	Position int `json:"position"`
	// Reason is why a copy is deleted: duplicate, misplaced, stale or cleanup.
	Reason string `json:"reason"`
	// Comment is the comment of the jump.
	Comment string `json:"comment"`
	// Rule is the rule as `iptables -S` prints it (without `-A CHAIN`).
	Rule string `json:"rule"`
}

// Conflict is a constraint the foreign rules make impossible to meet without moving
// them; the jump was placed to meet its other constraints.
type Conflict struct {
	// Jump is the index of the jump in its chain's Jumps.
	Jump int `json:"jump"`
	// Comment and Target are the jump's.
	Comment string `json:"comment"`
	Target  string `json:"target"`
	// Unmet is the constraint, e.g. "after cali-PREROUTING".
	Unmet string `json:"unmet"`
	// Blocking are the rules in the way.
	Blocking []Blocking `json:"blocking"`
}

// Blocking is a foreign rule in the way of a constraint.
type Blocking struct {
	// Handle is its kernel handle.
	Handle uint64 `json:"handle"`
	// Position is its 1-based position in the chain as read.
	Position int `json:"position"`
	// Target is the chain it jumps to ("" for none).
	Target string `json:"target"`
}

// String is the conflict as `jumpset` prints it.
func (c Conflict) String() string {
	s := fmt.Sprintf("conflict: the jump to %s (%q) cannot be placed %s without moving rules jumpset does not own", c.Target, c.Comment, c.Unmet)
	var by []string
	for _, b := range c.Blocking {
		t := ""
		if b.Target != "" {
			t = ", -j " + b.Target
		}
		by = append(by, fmt.Sprintf("rule %d (handle %d%s)", b.Position, b.Handle, t))
	}
	if len(by) > 0 {
		s += ": blocked by " + strings.Join(by, ", ")
	}
	return s
}

// ChainApply is what a reconcile (or a cleanup) did to one chain in one family.
type ChainApply struct {
	ChainID
	// Ops are the changes: deletes (in chain order), then inserts (in final order).
	Ops []Op `json:"ops"`
	// Conflicts are the constraints foreign rules made impossible.
	Conflicts []Conflict `json:"conflicts"`
	// Committed tells whether a kernel transaction was committed.
	Committed bool `json:"committed"`
	// GenerationBefore is the ruleset generation the plan was made from (nf_tables
	// genid; legacy: the table's entry count).
	GenerationBefore uint32 `json:"generation_before"`
	// GenerationAfter is the generation after the commit (the same when none).
	GenerationAfter uint32 `json:"generation_after"`
	// Retries counts stale writes re-planned.
	Retries uint32 `json:"retries"`
}

// Inserted returns the insert ops: the jumps placed, with their new handles.
func (c ChainApply) Inserted() []Op {
	var out []Op
	for _, op := range c.Ops {
		if op.Op == "insert" {
			out = append(out, op)
		}
	}
	return out
}

// Verdict is what a check concluded for one chain in one family.
type Verdict string

const (
	// Converged: nothing to change, every constraint met.
	Converged Verdict = "converged"
	// Drift: changes are needed; Reconcile makes them.
	Drift Verdict = "drift"
	// ConflictVerdict: nothing to change, but a constraint cannot be met without moving
	// foreign rules (as converged as it can be).
	ConflictVerdict Verdict = "conflict"
)

// ChainCheck is a check of one chain in one family: the plan and the verdict.
type ChainCheck struct {
	ChainID
	// Ops are what Reconcile would do.
	Ops []Op `json:"ops"`
	// Conflicts are the constraints foreign rules make impossible.
	Conflicts []Conflict `json:"conflicts"`
	// Verdict is the conclusion.
	Verdict Verdict `json:"verdict"`
	// Anchors are the other agents' jumps named in after/before, present or absent.
	Anchors []Anchor `json:"anchors"`
	// ExpectAnchors: an absent anchor is drift (the config's expect_anchors).
	ExpectAnchors bool `json:"expect_anchors"`
}

// Anchor is a chain named in an owned jump's after/before that no owned jump targets:
// another agent's jump, as the kernel has it now.
type Anchor struct {
	// Target is the chain it jumps to.
	Target string `json:"target"`
	// Present: a rule of the chain jumps or goes there.
	Present bool `json:"present"`
	// Positions are the 1-based positions of those rules.
	Positions []int `json:"positions"`
	// Owner is the agent it looks like (kube-proxy, calico, portmap, ...).
	Owner string `json:"owner"`
	// NamedBy are the declared jumps that name it.
	NamedBy []AnchorUse `json:"named_by"`
}

// AnchorUse is a declared jump naming an anchor.
type AnchorUse struct {
	// Jump is the declared jump's target.
	Jump string `json:"jump"`
	// Relation is "after" or "before".
	Relation string `json:"relation"`
}

// Counters are a rule's packet and byte counters.
type Counters struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Rule is one rule of a managed chain, as Status shows it.
type Rule struct {
	// Handle is the kernel handle (legacy: the 1-based position when read).
	Handle uint64 `json:"handle"`
	// Position is 1-based.
	Position int `json:"position"`
	// Target is the chain it jumps or goes to ("" for none).
	Target string `json:"target"`
	// Comment is its comment ("" for none).
	Comment string `json:"comment"`
	// CommentEncoding is where the comment is stored ("" for none).
	CommentEncoding CommentEncoding `json:"comment_encoding"`
	// Owner is "jumpset" for an owned jump, else the agent it looks like (calico,
	// kube-proxy, kube-ovn, portmap, docker, unknown).
	Owner string `json:"owner"`
	// Owned: one of jumpset's (owned, duplicate, misplaced or stale).
	Owned bool `json:"owned"`
	// DeclaredBy is, for one of jumpset's, the agent that declared the jump (a drop-in
	// fragment's or an API claim's); nil for the main config's.
	DeclaredBy *string `json:"declared_by"`
	// Role is owned, duplicate, misplaced, stale or foreign.
	Role string `json:"role"`
	// InPlace: owned and in place, or foreign.
	InPlace bool `json:"in_place"`
	// Counters, when the rule has a counter.
	Counters *Counters `json:"counters"`
	// Rule is the rule as `iptables -S` prints it.
	Rule string `json:"rule"`
}

// Missing is a declared jump with no copy in a valid place.
type Missing struct {
	Comment string `json:"comment"`
	Target  string `json:"target"`
}

// ChainStatus is the status of one chain in one family.
type ChainStatus struct {
	ChainID
	// Generation is the ruleset generation the read was taken at.
	Generation uint32 `json:"generation"`
	// TableExists and ChainExists say what the kernel has.
	TableExists bool `json:"table_exists"`
	ChainExists bool `json:"chain_exists"`
	// InOrder: nothing to change (a conflict can still be reported).
	InOrder bool `json:"in_order"`
	// Rules are the chain's rules, in order.
	Rules []Rule `json:"rules"`
	// Missing are declared jumps with no copy in a valid place.
	Missing []Missing `json:"missing"`
	// Conflicts are the constraints foreign rules make impossible.
	Conflicts []Conflict `json:"conflicts"`
	// Anchors are the other agents' jumps named in after/before, present or absent.
	Anchors []Anchor `json:"anchors"`
}

// ApplyReport is the report of Reconcile or Release: one entry per chain and family.
type ApplyReport struct {
	Chains []ChainApply
}

// CheckReport is the report of Check: one entry per chain and family.
type CheckReport struct {
	Chains []ChainCheck
}

// StatusReport is the report of Status: one entry per chain and family.
type StatusReport struct {
	Chains []ChainStatus
}

// ExitCode is the `jumpset apply` exit code: 0, 5 (conflict) or the worst error's.
func (r *ApplyReport) ExitCode() int {
	code := 0
	for _, c := range r.Chains {
		code = worse(code, entryCode(c.ChainID, len(c.Conflicts) > 0, 5))
	}
	return code
}

// Inserted returns every insert op of every chain.
func (r *ApplyReport) Inserted() []Op {
	var out []Op
	for _, c := range r.Chains {
		out = append(out, c.Inserted()...)
	}
	return out
}

// ExitCode is the `jumpset check` exit code: 0 converged, 1 drift, 5 conflict, or the
// worst error's.
func (r *CheckReport) ExitCode() int {
	code := 0
	for _, c := range r.Chains {
		switch {
		case c.Err != nil:
			code = worse(code, entryCode(c.ChainID, false, 0))
		case c.Verdict == Drift:
			code = worse(code, 1)
		case c.Verdict == ConflictVerdict:
			code = worse(code, 5)
		}
	}
	return code
}

// Converged tells whether every chain converged (conflicts aside: as close as foreign
// rules allow counts as converged).
func (r *CheckReport) Converged() bool {
	for _, c := range r.Chains {
		if c.Err != nil || c.Verdict == Drift {
			return false
		}
	}
	return true
}

// Drift returns the chains that need changes.
func (r *CheckReport) Drift() []ChainCheck {
	var out []ChainCheck
	for _, c := range r.Chains {
		if c.Err == nil && c.Verdict == Drift {
			out = append(out, c)
		}
	}
	return out
}

// InOrder tells whether every chain needs no change.
func (r *StatusReport) InOrder() bool {
	for _, c := range r.Chains {
		if c.Err != nil || !c.InOrder {
			return false
		}
	}
	return true
}

// entryCode is the exit code of one entry: its error's, else `ifTrue` when `cond`.
func entryCode(id ChainID, cond bool, ifTrue int) int {
	if id.Err != nil {
		if e, ok := id.Err.(*Error); ok && e.ExitCode != 0 {
			return e.ExitCode
		}
		return 4
	}
	if cond {
		return ifTrue
	}
	return 0
}

// worse is the worse of two exit codes, as `jumpset` ranks them: usage, privilege,
// kernel errors, then a conflict, then drift.
func worse(a, b int) int {
	rank := func(c int) int {
		switch c {
		case 0:
			return 0
		case 1:
			return 1
		case 5:
			return 2
		case 4:
			return 3
		case 3:
			return 4
		}
		return 5
	}
	if rank(b) > rank(a) {
		return b
	}
	return a
}

// name is how a chain is named in messages: "ip nat PREROUTING".
func (id ChainID) name() string {
	return fmt.Sprintf("%s %s %s", id.Family, id.Table, id.Chain)
}

// ---- decoding the command's JSON ----

// entries splits a report as the `jumpset` command prints it (one entry; one chain in
// both families; several chains) into its per-chain, per-family entries, in order.
func entries(raw []byte) ([]json.RawMessage, error) {
	fields, err := objectFields(raw)
	if err != nil {
		return nil, err
	}
	if chains, ok := fields.get("chains"); ok {
		var groups []json.RawMessage
		if err := json.Unmarshal(chains, &groups); err != nil {
			return nil, err
		}
		var out []json.RawMessage
		for _, g := range groups {
			e, err := entries(g)
			if err != nil {
				return nil, err
			}
			out = append(out, e...)
		}
		return out, nil
	}
	if families, ok := fields.get("families"); ok {
		fams, err := objectFields(families)
		if err != nil {
			return nil, err
		}
		out := make([]json.RawMessage, 0, len(fams))
		for _, f := range fams {
			out = append(out, f.value)
		}
		return out, nil
	}
	return []json.RawMessage{raw}, nil
}

type field struct {
	key   string
	value json.RawMessage
}

type fieldList []field

func (l fieldList) get(key string) (json.RawMessage, bool) {
	for _, f := range l {
		if f.key == key {
			return f.value, true
		}
	}
	return nil, false
}

// objectFields is a JSON object's fields, in order (encoding/json's maps lose it).
func objectFields(raw []byte) (fieldList, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return nil, fmt.Errorf("expected a JSON object, got %v", tok)
	}
	var out fieldList
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		key, _ := tok.(string)
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, err
		}
		out = append(out, field{key, v})
	}
	return out, nil
}

// entryHead is what every entry has, and what a failed one has besides.
type entryHead struct {
	ChainID
	Error    *string `json:"error"`
	ExitCode int     `json:"exit_code"`
}

// decodeEntries decodes each entry of a report into a new T with `into`, or records its
// failure with `failed`.
func decodeEntries(op string, raw []byte, ok func(json.RawMessage) error, failed func(ChainID)) error {
	list, err := entries(raw)
	if err != nil {
		return err
	}
	for _, e := range list {
		var head entryHead
		if err := json.Unmarshal(e, &head); err != nil {
			return err
		}
		if head.Error != nil {
			id := head.ChainID
			id.Err = exitError(op, head.ExitCode, id.name()+": "+*head.Error)
			failed(id)
			continue
		}
		if err := ok(e); err != nil {
			return err
		}
	}
	return nil
}

func decodeApply(op string, raw []byte) (*ApplyReport, error) {
	r := &ApplyReport{}
	err := decodeEntries(op, raw, func(e json.RawMessage) error {
		var c ChainApply
		err := json.Unmarshal(e, &c)
		r.Chains = append(r.Chains, c)
		return err
	}, func(id ChainID) { r.Chains = append(r.Chains, ChainApply{ChainID: id}) })
	return r, err
}

func decodeCheck(op string, raw []byte) (*CheckReport, error) {
	r := &CheckReport{}
	err := decodeEntries(op, raw, func(e json.RawMessage) error {
		var c ChainCheck
		err := json.Unmarshal(e, &c)
		r.Chains = append(r.Chains, c)
		return err
	}, func(id ChainID) { r.Chains = append(r.Chains, ChainCheck{ChainID: id}) })
	return r, err
}

func decodeStatus(op string, raw []byte) (*StatusReport, error) {
	r := &StatusReport{}
	err := decodeEntries(op, raw, func(e json.RawMessage) error {
		var c ChainStatus
		err := json.Unmarshal(e, &c)
		r.Chains = append(r.Chains, c)
		return err
	}, func(id ChainID) { r.Chains = append(r.Chains, ChainStatus{ChainID: id}) })
	return r, err
}

// applyError is the error a reconcile or cleanup report carries: nil for exit code 0,
// else one line per chain and family that is not right (its error, or its conflicts).
func applyError(op string, r *ApplyReport) error {
	code := r.ExitCode()
	if code == 0 {
		return nil
	}
	var lines []string
	var conflicts []Conflict
	for _, c := range r.Chains {
		if c.Err != nil {
			lines = append(lines, c.Err.(*Error).Message)
			continue
		}
		for _, k := range c.Conflicts {
			lines = append(lines, c.name()+": "+k.String())
		}
		conflicts = append(conflicts, c.Conflicts...)
	}
	e := exitError(op, code, strings.Join(lines, "\n"))
	e.Conflicts = conflicts
	return e
}

// checkError is the error of a check report: nil unless a chain failed (drift and
// conflicts are verdicts, not errors).
func checkError(op string, r *CheckReport) error {
	code := r.ExitCode()
	if code == 0 || code == 1 || code == 5 {
		return nil
	}
	var lines []string
	for _, c := range r.Chains {
		if c.Err != nil {
			lines = append(lines, c.Err.(*Error).Message)
		}
	}
	return exitError(op, code, strings.Join(lines, "\n"))
}

// statusError is the error of a status report: nil unless a chain failed.
func statusError(op string, r *StatusReport) error {
	var lines []string
	code := 0
	for _, c := range r.Chains {
		if c.Err != nil {
			lines = append(lines, c.Err.(*Error).Message)
			code = worse(code, entryCode(c.ChainID, false, 0))
		}
	}
	if code == 0 {
		return nil
	}
	return exitError(op, code, strings.Join(lines, "\n"))
}

package jumpset

import (
	"errors"
	"fmt"
	"strings"
)

// The kinds of failure, for errors.Is. Every error this package returns is an *Error
// that matches exactly one of them.
var (
	// ErrConfig: the spec is invalid (exit code 2; HTTP 400). *Error.Key names the key.
	ErrConfig = errors.New("jumpset: invalid spec")
	// ErrPrivilege: a capability is missing (CAP_NET_ADMIN; CAP_NET_RAW for legacy), or
	// the daemon refused the caller (exit code 3; HTTP 403).
	ErrPrivilege = errors.New("jumpset: not permitted")
	// ErrKernel: the kernel refused or failed (exit code 4).
	ErrKernel = errors.New("jumpset: kernel error")
	// ErrConflict: the declared order cannot be met. Either the jumps were placed as
	// close as foreign rules allow (exit code 5; the report comes with the error), or the
	// daemon refused a claim that contradicts another agent's (HTTP 409; nothing written).
	ErrConflict = errors.New("jumpset: conflict")
	// ErrHeld: the daemon stored the claim but holds off writes (paused, yielding,
	// starting); it applies the claim when it resumes (HTTP 202).
	ErrHeld = errors.New("jumpset: held by the daemon")
	// ErrNotFound: the agent holds no claim (HTTP 404).
	ErrNotFound = errors.New("jumpset: not found")
	// ErrUnavailable: the daemon cannot be reached or is not ready (HTTP 503), or the
	// in-process transport is not built in (CGO_ENABLED=0). Retry later.
	ErrUnavailable = errors.New("jumpset: unavailable")
	// ErrInternal: a bug in jumpset (a caught panic, exit code 101; HTTP 500).
	ErrInternal = errors.New("jumpset: internal error")
)

// Error is a failure of a call, with what jumpset said about it.
type Error struct {
	// Op is the call: "reconcile", "check", "status", "release", "claim".
	Op string
	// Kind is the sentinel the error matches (ErrConfig, ...).
	Kind error
	// Message is what jumpset said, as the `jumpset` command prints it (several lines
	// when several chains failed).
	Message string
	// ExitCode is the `jumpset` command's exit code for it (0 when none applies).
	ExitCode int
	// Key and Line locate a bad spec: the key path (`chains[0].jumps[1].after`; "" for
	// the whole spec) and the 1-based line of its JSON (0: unknown).
	Key  string
	Line int
	// HTTPStatus is the daemon's response status (socket transport; 0 in-process).
	HTTPStatus int
	// Constraint, ConflictsWith and Cycle say why the daemon refused a claim (409): the
	// claim's constraint, the agent or fragment it contradicts (`agent:NAME`,
	// `fragment:PATH`, `config:PATH`), and the chain names of the cycle.
	Constraint    string
	ConflictsWith string
	Cycle         []string
	// State and Reason say why the daemon holds off writes (ErrHeld).
	State  string
	Reason string
	// Conflicts are the constraints foreign rules made impossible (exit code 5).
	Conflicts []Conflict
	// Err is the underlying error (a dial failure, a JSON decoding error), if any.
	Err error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("jumpset")
	if e.Op != "" {
		b.WriteString(" " + e.Op)
	}
	b.WriteString(": ")
	switch {
	case e.Message != "":
		b.WriteString(e.Message)
	case e.Kind != nil:
		b.WriteString(strings.TrimPrefix(e.Kind.Error(), "jumpset: "))
	default:
		b.WriteString("failed")
	}
	if e.Err != nil && e.Message == "" {
		b.WriteString(": " + e.Err.Error())
	}
	return b.String()
}

// Is reports whether target is the error's kind.
func (e *Error) Is(target error) bool { return target != nil && target == e.Kind }

// Unwrap returns the underlying error.
func (e *Error) Unwrap() error { return e.Err }

// kindOfExit is the sentinel of a `jumpset` exit code.
func kindOfExit(code int) error {
	switch code {
	case 2:
		return ErrConfig
	case 3:
		return ErrPrivilege
	case 4:
		return ErrKernel
	case 5:
		return ErrConflict
	case 101:
		return ErrInternal
	}
	return ErrInternal
}

// exitError is the error for exit code `code` with `message`.
func exitError(op string, code int, message string) *Error {
	return &Error{Op: op, Kind: kindOfExit(code), ExitCode: code, Message: message}
}

// configError is an ErrConfig about key, found before jumpset saw the spec.
func configError(key, message string) *Error {
	return &Error{Kind: ErrConfig, ExitCode: 2, Key: key, Message: fmt.Sprintf("config: %s: %s", key, message)}
}

// errorJSON is the JSON of an error: the library's last error, the daemon's error
// bodies.
type errorJSON struct {
	Error         string   `json:"error"`
	ExitCode      *int     `json:"exit_code"`
	Key           *string  `json:"key"`
	Line          *int     `json:"line"`
	Constraint    string   `json:"constraint"`
	ConflictsWith string   `json:"conflicts_with"`
	Cycle         []string `json:"cycle"`
	State         string   `json:"state"`
	Reason        string   `json:"reason"`
}

// toError fills an *Error of kind (nil: from the exit code) from the JSON.
func (j errorJSON) toError(op string, kind error) *Error {
	e := &Error{Op: op, Kind: kind, Message: j.Error, Constraint: j.Constraint,
		ConflictsWith: j.ConflictsWith, Cycle: j.Cycle, State: j.State, Reason: j.Reason}
	if j.ExitCode != nil {
		e.ExitCode = *j.ExitCode
		if e.Kind == nil {
			e.Kind = kindOfExit(*j.ExitCode)
		}
	}
	if e.Kind == nil {
		e.Kind = ErrInternal
	}
	if j.Key != nil {
		e.Key = *j.Key
	}
	if j.Line != nil {
		e.Line = *j.Line
	}
	return e
}

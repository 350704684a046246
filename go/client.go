package jumpset

import "context"

// Client hands jumps over to jumpset: in-process (NewInProcess) or to the daemon
// (NewSocket). Every method takes the whole Spec: a Reconcile is declarative (the spec's
// jumps, exactly), so an agent calls it with what it wants on each of its passes.
type Client interface {
	// Reconcile makes the spec's chains hold its jumps, each exactly once and in place:
	// in-process, one kernel transaction per chain and family; over the socket, the
	// daemon stores the agent's claim (replacing its previous one) and reconciles. The
	// report's insert ops carry the new rules' handles. A report whose jumps were placed
	// as close as foreign rules allow comes WITH an error that is ErrConflict; a chain
	// that failed in the kernel comes with ErrKernel or ErrPrivilege.
	Reconcile(ctx context.Context, spec Spec) (*ApplyReport, error)
	// Check compares the kernel's chains with the spec without writing: drift (and a
	// conflict) is the report's verdict, not an error; the error is for a check that
	// could not be made. Over the socket it is the daemon's check of the spec's chains.
	Check(ctx context.Context, spec Spec) (*CheckReport, error)
	// Status reads the spec's chains: each rule, its owner, in place or not. Over the
	// socket, the daemon's status of the spec's chains (every chain it manages when the
	// spec names none).
	Status(ctx context.Context, spec Spec) (*StatusReport, error)
	// Release hands the jumps back. Over the socket the agent's claim is dropped and,
	// with remove, its jumps are removed from the kernel (else they stay, foreign to
	// jumpset from then on). In-process there is no claim: with remove the spec's jumps
	// are removed (`jumpset cleanup`), without it nothing is done. The report is nil
	// when nothing was removed.
	Release(ctx context.Context, spec Spec, remove bool) (*ApplyReport, error)
}

var (
	_ Client = (*InProcess)(nil)
	_ Client = (*Socket)(nil)
)

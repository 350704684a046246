// Package jumpset hands an agent's netfilter jumps to jumpset instead of running
// iptables: declare the jumps (each identified by its comment) and where they go relative
// to the others' in a Spec, and jumpset puts them there, as one guarded kernel transaction
// per chain, never touching a rule it does not own.
//
// Two transports sit behind one interface, Client:
//
//   - NewInProcess: the jumpset library itself, linked through its C ABI (cgo; found with
//     `pkg-config jumpset`, installed by ffi/install.sh). For a node without the daemon.
//   - NewSocket: the local API of a running `jumpset daemon` (HTTP over a Unix socket,
//     docs/api.md), pure Go: it builds with CGO_ENABLED=0. The daemon keeps the agent's
//     jumps in place from then on and checks them against every other agent's.
//
// Never declare one jump both ways on a node: to a running daemon an in-process writer
// is a foreign writer like any other.
//
// # Results and errors
//
// Reconcile, Check and Status return typed reports that mirror the JSON of the
// `jumpset` command (`apply --json`, `check --json`, `status --json`), one entry per chain
// and family. Check tells drift apart from failure: drift is a verdict in its report, not
// an error. Errors are *Error values to test with errors.Is against ErrConfig,
// ErrPrivilege, ErrKernel, ErrConflict, ErrHeld, ErrNotFound, ErrUnavailable and
// ErrInternal, and with errors.As for the details (the key of a bad spec, the agent a
// claim contradicts). A reconcile that placed the jumps as close as foreign rules allow
// returns its report AND an error that is ErrConflict.
//
// # Network namespaces and OS threads (in-process transport)
//
// Every in-process call acts in the network namespace of the OS thread it runs on, at
// the time of the call: the library opens its kernel sockets there and closes them
// before it returns. To act in another namespace (a pod's), lock the goroutine to its
// thread and move that thread, then call:
//
//	runtime.LockOSThread()
//	// setns(fd of /proc/PID/ns/net or /run/netns/NAME, CLONE_NEWNET), e.g. with
//	// golang.org/x/sys/unix.Setns; keep the thread locked while it is in the namespace
//	report, err := client.Reconcile(ctx, spec)
//	// setns back to the original namespace before runtime.UnlockOSThread(), or never
//	// unlock: Go then ends the thread with the goroutine.
//
// Without runtime.LockOSThread the scheduler may run the call on any thread, in
// whichever namespace that thread is in. The library's last error is per OS thread too;
// the in-process transport locks the thread around each call so that a call and the
// error it left are read on the same thread (the lock nests inside the caller's).
//
// The socket transport acts where the daemon runs (normally the host's network
// namespace), whatever the calling thread's namespace is.
package jumpset

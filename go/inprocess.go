package jumpset

// InProcess is the in-process transport: the jumpset library linked through its C ABI
// (cgo, `#cgo pkg-config: jumpset`). Each call validates the spec (jumpset_new_json),
// acts in the network namespace of the calling OS thread and returns; nothing is kept
// between calls, so an InProcess is safe for concurrent use. In a build without cgo
// (CGO_ENABLED=0) NewInProcess fails with ErrUnavailable.
type InProcess struct {
	// resolve finds BackendIptables (ResolveIptables; tests stand in for it).
	resolve func() (Backend, error)
}

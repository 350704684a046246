//go:build !cgo

package jumpset

import "context"

func errNoCgo(op string) *Error {
	return &Error{Op: op, Kind: ErrUnavailable, Message: "this program was built without cgo (CGO_ENABLED=0): the in-process transport is not available; use NewSocket"}
}

// NewInProcess fails in a build without cgo: the in-process transport links the C
// library. Use NewSocket.
func NewInProcess() (*InProcess, error) { return nil, errNoCgo("in-process") }

// LibraryVersion is "" without cgo.
func (p *InProcess) LibraryVersion() string { return "" }

// Reconcile fails without cgo.
func (p *InProcess) Reconcile(context.Context, Spec) (*ApplyReport, error) {
	return nil, errNoCgo("reconcile")
}

// Check fails without cgo.
func (p *InProcess) Check(context.Context, Spec) (*CheckReport, error) {
	return nil, errNoCgo("check")
}

// Status fails without cgo.
func (p *InProcess) Status(context.Context, Spec) (*StatusReport, error) {
	return nil, errNoCgo("status")
}

// Release fails without cgo.
func (p *InProcess) Release(context.Context, Spec, bool) (*ApplyReport, error) {
	return nil, errNoCgo("release")
}

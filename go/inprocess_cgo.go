//go:build cgo

package jumpset

/*
#cgo pkg-config: jumpset
#include <stdlib.h>
#include <jumpset.h>
*/
import "C"

import (
	"context"
	"encoding/json"
	"runtime"
	"unsafe"
)

// rawReport, when set (by tests), sees the JSON of every report the library hands out.
var rawReport func(op string, raw []byte)

// NewInProcess is the in-process transport. It needs the library at run time
// (libjumpset.so.1, found by the dynamic linker) and, to act, CAP_NET_ADMIN (plus
// CAP_NET_RAW for the legacy backend).
func NewInProcess() (*InProcess, error) {
	return &InProcess{resolve: ResolveIptables}, nil
}

// LibraryVersion is the version of the linked jumpset library.
func (p *InProcess) LibraryVersion() string {
	return C.GoString(C.jumpset_version())
}

// Reconcile is `jumpset apply`: one kernel transaction per chain and family, in the
// calling OS thread's network namespace.
func (p *InProcess) Reconcile(ctx context.Context, spec Spec) (*ApplyReport, error) {
	var r *ApplyReport
	err := p.call(ctx, "reconcile", spec, func(h *C.jumpset_t) error {
		raw, failed := report(func(out **C.char) C.int { return C.jumpset_reconcile(h, out) })
		if failed {
			return lastError("reconcile")
		}
		var err error
		if r, err = decodeApply("reconcile", raw); err != nil {
			return badReport("reconcile", err)
		}
		return applyError("reconcile", r)
	})
	return r, err
}

// Check is `jumpset check`: drift and conflicts are verdicts in the report.
func (p *InProcess) Check(ctx context.Context, spec Spec) (*CheckReport, error) {
	var r *CheckReport
	err := p.call(ctx, "check", spec, func(h *C.jumpset_t) error {
		raw, failed := report(func(out **C.char) C.int { return C.jumpset_check_json(h, out) })
		if failed {
			return lastError("check")
		}
		var err error
		if r, err = decodeCheck("check", raw); err != nil {
			return badReport("check", err)
		}
		return checkError("check", r)
	})
	return r, err
}

// Status is `jumpset status` of the spec's chains.
func (p *InProcess) Status(ctx context.Context, spec Spec) (*StatusReport, error) {
	var r *StatusReport
	err := p.call(ctx, "status", spec, func(h *C.jumpset_t) error {
		s := C.jumpset_status_json(h)
		if s == nil {
			return lastError("status")
		}
		raw := take(s)
		if rawReport != nil {
			rawReport("status", raw)
		}
		var err error
		if r, err = decodeStatus("status", raw); err != nil {
			return badReport("status", err)
		}
		return nil
	})
	return r, err
}

// Release with remove is `jumpset cleanup` of the spec's jumps; without it, nothing.
func (p *InProcess) Release(ctx context.Context, spec Spec, remove bool) (*ApplyReport, error) {
	if !remove {
		return nil, nil
	}
	var r *ApplyReport
	err := p.call(ctx, "release", spec, func(h *C.jumpset_t) error {
		raw, failed := report(func(out **C.char) C.int { return C.jumpset_cleanup(h, out) })
		if failed {
			return lastError("release")
		}
		var err error
		if r, err = decodeApply("release", raw); err != nil {
			return badReport("release", err)
		}
		return applyError("release", r)
	})
	return r, err
}

// call makes a handle of spec and runs f on it, the goroutine locked to its OS thread so
// that the calls and the thread's last error stay on one thread (in its namespace).
func (p *InProcess) call(ctx context.Context, op string, spec Spec, f func(*C.jumpset_t) error) error {
	if err := ctx.Err(); err != nil {
		return &Error{Op: op, Kind: ErrUnavailable, Message: err.Error(), Err: err}
	}
	resolve := p.resolve
	if resolve == nil {
		resolve = ResolveIptables
	}
	js, err := specJSON(spec, resolve)
	if err != nil {
		if e, ok := err.(*Error); ok {
			e.Op = op
			return e
		}
		return &Error{Op: op, Kind: ErrConfig, ExitCode: 2, Message: err.Error(), Err: err}
	}
	cs := C.CString(string(js))
	defer C.free(unsafe.Pointer(cs))

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var errOut *C.char
	h := C.jumpset_new_json(cs, &errOut)
	if h == nil {
		C.jumpset_string_free(errOut)
		return lastError(op)
	}
	defer C.jumpset_free(h)
	return f(h)
}

// report runs a call that always hands out a JSON report, and tells whether the call
// failed as a whole (the JSON is then only `{"error", "exit_code"}`, and the thread's
// last error says the same).
func report(call func(**C.char) C.int) (raw []byte, failed bool) {
	var out *C.char
	call(&out)
	raw = take(out)
	if rawReport != nil {
		rawReport("report", raw)
	}
	var head struct {
		Error    *string         `json:"error"`
		Family   *string         `json:"family"`
		Families json.RawMessage `json:"families"`
		Chains   json.RawMessage `json:"chains"`
	}
	if json.Unmarshal(raw, &head) == nil && head.Error != nil && head.Family == nil &&
		head.Families == nil && head.Chains == nil {
		return raw, true
	}
	return raw, false
}

// lastError is this thread's last error (jumpset_last_error_json) as an *Error.
func lastError(op string) *Error {
	p := C.jumpset_last_error_json()
	if p == nil {
		return &Error{Op: op, Kind: ErrInternal, Message: "the call failed without saying why"}
	}
	var j errorJSON
	if err := json.Unmarshal([]byte(C.GoString(p)), &j); err != nil {
		return &Error{Op: op, Kind: ErrInternal, Message: C.GoString(C.jumpset_last_error()), Err: err}
	}
	return j.toError(op, nil)
}

func badReport(op string, err error) *Error {
	return &Error{Op: op, Kind: ErrInternal, Message: "cannot read the library's report: " + err.Error(), Err: err}
}

// take copies a string the library handed out and frees it.
func take(s *C.char) []byte {
	if s == nil {
		return nil
	}
	defer C.jumpset_string_free(s)
	return []byte(C.GoString(s))
}

// Package main is a Go agent that embeds jumpset through its C ABI (cgo) instead of
// running iptables. This file is the binding; main.go is the agent.
//
// SPDX-License-Identifier: Apache-2.0 OR MIT
package main

/*
#cgo CFLAGS: -I${SRCDIR}/../../include
#cgo LDFLAGS: -ljumpset
#include <stdlib.h>
#include "jumpset.h"
*/
import "C"

import (
	"errors"
	"runtime"
	"unsafe"
)

// Exit codes of the jumpset command, returned by Check and Reconcile.
const (
	ExitOK       = int(C.JUMPSET_EXIT_OK)
	ExitDrift    = int(C.JUMPSET_EXIT_DRIFT)
	ExitUsage    = int(C.JUMPSET_EXIT_USAGE)
	ExitConflict = int(C.JUMPSET_EXIT_CONFLICT)
)

// Jumpset is a handle: a validated config. Safe for concurrent use; every call acts in
// the network namespace of the OS thread it runs on.
type Jumpset struct {
	h *C.jumpset_t
}

// onThread runs f with the goroutine locked to its OS thread, so that f's call and its
// jumpset_last_error() (which is per thread) happen on the same thread. A caller that
// has moved its OS thread into another network namespace must itself hold
// runtime.LockOSThread around the calls, or the Go scheduler may run them elsewhere.
func onThread(f func()) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f()
}

func lastError() error {
	if e := C.jumpset_last_error(); e != nil {
		return errors.New(C.GoString(e))
	}
	return errors.New("jumpset: unknown error")
}

// take copies a string handed out by the library and frees it.
func take(s *C.char) string {
	defer C.jumpset_string_free(s)
	return C.GoString(s)
}

// New validates a config (TOML text).
func New(config string) (*Jumpset, error) {
	c := C.CString(config)
	defer C.free(unsafe.Pointer(c))
	var errOut *C.char
	h := C.jumpset_new(c, &errOut)
	if h == nil {
		return nil, errors.New(take(errOut))
	}
	return &Jumpset{h: h}, nil
}

// Close frees the handle.
func (j *Jumpset) Close() {
	C.jumpset_free(j.h)
	j.h = nil
}

// Check compares the kernel's chains with the config: ExitOK converged, ExitDrift, or
// another exit code with the error.
func (j *Jumpset) Check() (code int, err error) {
	onThread(func() {
		code = int(C.jumpset_check(j.h))
		if code != ExitOK {
			err = lastError()
		}
	})
	return
}

// Reconcile makes one reconcile; the report is JSON (or {"error", "exit_code"}).
func (j *Jumpset) Reconcile() (code int, report string, err error) {
	onThread(func() {
		var out *C.char
		code = int(C.jumpset_reconcile(j.h, &out))
		report = take(out)
		if code != ExitOK {
			err = lastError()
		}
	})
	return
}

// StatusJSON returns the managed chains as the kernel has them, as one JSON object.
func (j *Jumpset) StatusJSON() (s string, err error) {
	onThread(func() {
		if p := C.jumpset_status_json(j.h); p != nil {
			s = take(p)
		} else {
			err = lastError()
		}
	})
	return
}

// DetectJSON classifies the host (nft, legacy, mixed or none), as one JSON object.
func DetectJSON() (s string, err error) {
	onThread(func() {
		if p := C.jumpset_detect_json(); p != nil {
			s = take(p)
		} else {
			err = lastError()
		}
	})
	return
}

// Version is the library's version.
func Version() string {
	return C.GoString(C.jumpset_version())
}

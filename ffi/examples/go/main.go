// The agent: check -> reconcile -> check, then print the status and detect JSON objects,
// one `key=value` line per step (the same output as ffi/examples/c/agent.c).
//
// Build (from the repository root, after `cargo build --release -p jumpset-ffi`):
//
//	cd ffi/examples/go
//	CGO_LDFLAGS="-L$PWD/../../../target/release -Wl,-rpath,$PWD/../../../target/release" go build -o agent-go .
//
// Run as root (CAP_NET_ADMIN) in the network namespace to manage: ./agent-go CONFIG.toml
//
// SPDX-License-Identifier: Apache-2.0 OR MIT
package main

import (
	"encoding/json"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintf(os.Stderr, "usage: %s CONFIG.toml\n", os.Args[0])
		os.Exit(2)
	}
	config, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("version=%s\n", Version())
	js, err := New(string(config))
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: %v\n", err)
		os.Exit(2)
	}
	code := run(js)
	js.Close() // before os.Exit, which runs no deferred calls
	os.Exit(code)
}

func run(js *Jumpset) int {
	code, err := js.Check()
	fmt.Printf("check=%d\n", code)
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: check: %v\n", err)
	}
	code, report, err := js.Reconcile()
	fmt.Printf("reconcile=%d\nreport=%s\n", code, report)
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: reconcile: %v\n", err)
	}
	after, err := js.Check()
	fmt.Printf("check=%d\n", after)
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: check: %v\n", err)
	}
	ok := after == ExitOK
	for _, step := range []struct {
		name string
		get  func() (string, error)
	}{{"status", js.StatusJSON}, {"detect", DetectJSON}} {
		s, err := step.get()
		var obj map[string]any
		if err == nil {
			err = json.Unmarshal([]byte(s), &obj)
		}
		if err != nil {
			fmt.Fprintf(os.Stderr, "agent: %s: %v\n", step.name, err)
			ok = false
			continue
		}
		fmt.Printf("%s=%s\n", step.name, s)
	}
	if !ok {
		return 1
	}
	return 0
}

// A Go agent that hands its jump over to jumpset instead of running iptables: the shape
// of Kube-OVN's gateway pass (its `ensureNatPreroutingRule`) as one Reconcile.
//
// It declares Kube-OVN's jump in nat PREROUTING — after Calico's, before kube-proxy's
// and the CNI portmap's — and makes one pass: check, reconcile, check again. Through
// the daemon's socket with -socket (pure Go: builds with CGO_ENABLED=0), or in-process
// (cgo, the library found with pkg-config) on a node without the daemon.
//
// Build (after ffi/install.sh has put the library where pkg-config finds it):
//
//	cd ffi/examples/go && go build -o agent .
//
// Run as root (CAP_NET_ADMIN) in the network namespace to manage:
//
//	./agent                                 # in-process, backend = the node's iptables
//	./agent -socket /run/jumpset/jumpset.sock  # through the daemon
//
// It prints one `key=value` line per step and exits 0 when the chain ends converged.
//
// With -every, it runs as Kube-OVN's gateway loop does (wait.Until every 3 s): one
// Reconcile per pass, for -for, each pass one `pass=` line; it exits 0 when no pass
// failed.
//
// SPDX-License-Identifier: Apache-2.0 OR MIT
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/jumpset/jumpset/go"
)

func main() {
	socket := flag.String("socket", "", "hand the jump to the daemon at this socket (default: in-process)")
	backend := flag.String("backend", string(jumpset.BackendIptables), "in-process backend: iptables (whatever the node's iptables is), nft, legacy or auto")
	every := flag.Duration("every", 0, "run the pass in a loop, this long between passes (Kube-OVN: 3s)")
	loopFor := flag.Duration("for", 0, "with -every: how long to loop")
	flag.Parse()

	spec := jumpset.Spec{
		Backend: jumpset.Backend(*backend),
		Chains: []jumpset.Chain{{
			Table: "nat",
			Chain: "PREROUTING",
			Jumps: []jumpset.Jump{{
				Target:  "OVN-PREROUTING",
				Comment: "kube-ovn prerouting rules",
				After:   []string{"cali-PREROUTING"},
				Before:  []string{"KUBE-SERVICES", "CNI-HOSTPORT-DNAT"},
			}},
		}},
	}

	var client jumpset.Client
	var err error
	if *socket != "" {
		client, err = jumpset.NewSocket(*socket, "kube-ovn")
		fmt.Println("transport=socket")
	} else {
		var p *jumpset.InProcess
		p, err = jumpset.NewInProcess()
		if err == nil {
			fmt.Printf("transport=in-process\nversion=%s\n", p.LibraryVersion())
			client = p
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: %v\n", err)
		os.Exit(2)
	}
	if *every > 0 {
		os.Exit(loop(context.Background(), client, spec, *every, *loopFor))
	}
	os.Exit(pass(context.Background(), client, spec))
}

// loop is Kube-OVN's gateway loop with the jump handed over: every `every`, one
// Reconcile — where it used to list PREROUTING, insert at 1 or at kube-proxy's index and
// delete duplicates by index. Each pass prints `pass=<result> commits=<n>`.
func loop(ctx context.Context, client jumpset.Client, spec jumpset.Spec, every, total time.Duration) int {
	failed := 0
	for end := time.Now().Add(total); time.Now().Before(end); time.Sleep(every) {
		report, err := client.Reconcile(ctx, spec)
		commits := 0
		if report != nil {
			for _, c := range report.Chains {
				if c.Committed {
					commits++
				}
			}
		}
		switch {
		case err == nil:
			fmt.Printf("pass=ok commits=%d\n", commits)
		case errors.Is(err, jumpset.ErrConflict) && report != nil:
			fmt.Printf("pass=conflict commits=%d\n", commits)
		case errors.Is(err, jumpset.ErrHeld):
			fmt.Println("pass=held commits=0")
		default:
			failed++
			fmt.Printf("pass=failed commits=%d\n", commits)
			fmt.Fprintf(os.Stderr, "agent: reconcile: %v\n", err)
		}
	}
	if failed > 0 {
		return 1
	}
	return 0
}

// pass is one gateway pass: what Kube-OVN's ensureNatPreroutingRule becomes.
func pass(ctx context.Context, client jumpset.Client, spec jumpset.Spec) int {
	if check, err := client.Check(ctx, spec); err != nil {
		fmt.Fprintf(os.Stderr, "agent: check: %v\n", err)
	} else {
		fmt.Printf("check=%s\n", verdict(check))
	}

	report, err := client.Reconcile(ctx, spec)
	switch {
	case err == nil:
		fmt.Println("reconcile=ok")
	case errors.Is(err, jumpset.ErrConflict) && report != nil:
		// Placed as close as the foreign rules allow: worth a warning, not a retry.
		fmt.Println("reconcile=conflict")
		fmt.Fprintf(os.Stderr, "agent: %v\n", err)
	case errors.Is(err, jumpset.ErrHeld):
		// The daemon stored the claim and applies it when it resumes.
		fmt.Println("reconcile=held")
	default:
		var e *jumpset.Error
		if errors.As(err, &e) && e.Key != "" {
			fmt.Fprintf(os.Stderr, "agent: bad spec at %s\n", e.Key)
		}
		fmt.Fprintf(os.Stderr, "agent: reconcile: %v\n", err)
		return 1
	}
	if report != nil {
		for _, c := range report.Chains {
			for _, op := range c.Ops {
				fmt.Printf("op=%s %s %s %s handle=%d position=%d\n", op.Op, c.Family, c.Table, c.Chain, op.Handle, op.Position)
			}
		}
	}

	check, err := client.Check(ctx, spec)
	if err != nil {
		fmt.Fprintf(os.Stderr, "agent: check: %v\n", err)
		return 1
	}
	fmt.Printf("check=%s\n", verdict(check))
	if !check.Converged() {
		return 1
	}
	return 0
}

func verdict(r *jumpset.CheckReport) string {
	switch {
	case !r.Converged():
		return "drift"
	case r.ExitCode() == 5:
		return "conflict"
	}
	return "converged"
}

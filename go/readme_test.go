package jumpset_test

import (
	"os"
	"strings"
	"testing"
)

// README begin
import (
	"context"
	"errors"
	"fmt"
	"log"

	jumpset "github.com/jumpset/jumpset/go"
)

func newClient(daemon bool) (jumpset.Client, error) {
	if daemon {
		return jumpset.NewSocket("", "kube-ovn") // $JUMPSET_SOCKET, else /run/jumpset/jumpset.sock
	}
	return jumpset.NewInProcess() // cgo: the library found with pkg-config
}

// ensureNatPreroutingRule is Kube-OVN's gateway pass for its PREROUTING jump, handed over:
// no position to compute, no insert at 1, nothing to fight over.
func ensureNatPreroutingRule(ctx context.Context, client jumpset.Client) error {
	spec := jumpset.Spec{
		Backend: jumpset.BackendIptables, // whatever the node's iptables command is (in-process)
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
	report, err := client.Reconcile(ctx, spec)
	var e *jumpset.Error
	switch {
	case errors.Is(err, jumpset.ErrConflict) && report != nil:
		log.Printf("placed as close as the other rules allow: %v", err) // not a failure
	case errors.As(err, &e) && e.Key != "":
		return fmt.Errorf("bad spec at %s: %w", e.Key, err)
	case err != nil:
		return err // ErrPrivilege, ErrKernel, ErrHeld (the daemon will apply it), ...
	}
	for _, op := range report.Inserted() {
		log.Printf("inserted %q as rule handle %d", op.Comment, op.Handle)
	}
	return nil
}

// README end

// The Go snippet of the README ("Embedding in Go") is the code between the markers
// above, which is compiled here and run by TestTheReadmeSnippetConvergesTheBrokenChain.
func TestTheReadmeSnippetIsTheReadmesText(t *testing.T) {
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(readme)
	at := strings.Index(text, "## Embedding in Go")
	if at < 0 {
		t.Fatal("no \"## Embedding in Go\" section in README.md")
	}
	open := strings.Index(text[at:], "```go\n")
	if open < 0 {
		t.Fatal("no Go snippet in the README's \"Embedding in Go\"")
	}
	body := text[at+open+len("```go\n"):]
	snippet := body[:strings.Index(body, "\n```")]

	self, err := os.ReadFile("readme_test.go")
	if err != nil {
		t.Fatal(err)
	}
	code := string(self)
	begin := strings.Index(code, "// README begin\n") + len("// README begin\n")
	end := strings.Index(code, "\n// README end")
	if strings.TrimSpace(code[begin:end]) != strings.TrimSpace(snippet) {
		t.Errorf("the README's Go snippet differs from the code in readme_test.go:\n--- README\n%s\n--- readme_test.go\n%s", snippet, code[begin:end])
	}
}

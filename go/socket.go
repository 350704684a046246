package jumpset

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"time"
)

// DefaultSocket is where the daemon serves its local API.
const DefaultSocket = "/run/jumpset/jumpset.sock"

// Socket is the transport to a running `jumpset daemon`: its local API over a Unix
// socket (docs/api.md), speaking for one agent. Pure Go: it builds with CGO_ENABLED=0.
// Safe for concurrent use.
type Socket struct {
	path  string
	agent string
	http  *http.Client
}

var agentName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// SocketEnv names the variable that says where the daemon's socket is when NewSocket
// is given no path (a DaemonSet that mounts the host's /run/jumpset elsewhere sets it).
const SocketEnv = "JUMPSET_SOCKET"

// NewSocket is a client of the daemon listening on path (when "": $JUMPSET_SOCKET, else
// DefaultSocket), speaking for agent: the name its jumps are claimed under (1 to 63 of
// A-Z a-z 0-9 . _ -, starting with a letter or digit, e.g. "kube-ovn"). Nothing is
// dialled yet.
func NewSocket(path, agent string) (*Socket, error) {
	if path == "" {
		path = os.Getenv(SocketEnv)
	}
	if path == "" {
		path = DefaultSocket
	}
	if !agentName.MatchString(agent) {
		e := configError("agent", fmt.Sprintf("%q is not an agent name: 1 to 63 of A-Z a-z 0-9 . _ -, starting with a letter or digit", agent))
		e.Op = "socket"
		return nil, e
	}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", path)
		},
		MaxIdleConns:    2,
		IdleConnTimeout: 30 * time.Second,
	}
	return &Socket{path: path, agent: agent, http: &http.Client{Transport: t}}, nil
}

// Agent is the name the client speaks for.
func (s *Socket) Agent() string { return s.agent }

// Path is the socket's path.
func (s *Socket) Path() string { return s.path }

// Reconcile stores the spec's chains as the agent's claim (PUT /v1/agents/{agent}) and
// returns the daemon's reconcile of them. Backend and Families are the daemon's.
func (s *Socket) Reconcile(ctx context.Context, spec Spec) (*ApplyReport, error) {
	body, err := claimJSON(spec)
	if err != nil {
		return nil, err
	}
	var ok struct {
		Report json.RawMessage `json:"report"`
	}
	if err := s.do(ctx, "reconcile", http.MethodPut, s.agentPath(), body, &ok); err != nil {
		return nil, err
	}
	r, err := decodeApply("reconcile", ok.Report)
	if err != nil {
		return nil, s.badReply("reconcile", err)
	}
	return r, applyError("reconcile", r)
}

// Check is the daemon's check (GET /v1/check) of the spec's chains (all when none).
func (s *Socket) Check(ctx context.Context, spec Spec) (*CheckReport, error) {
	var raw json.RawMessage
	if err := s.do(ctx, "check", http.MethodGet, "/v1/check", nil, &raw); err != nil {
		return nil, err
	}
	r, err := decodeCheck("check", raw)
	if err != nil {
		return nil, s.badReply("check", err)
	}
	var keep []ChainCheck
	for _, c := range r.Chains {
		if wanted(spec, c.ChainID) {
			keep = append(keep, c)
		}
	}
	r.Chains = keep
	return r, checkError("check", r)
}

// Status is the daemon's status (GET /v1/chains) of the spec's chains (all when none).
func (s *Socket) Status(ctx context.Context, spec Spec) (*StatusReport, error) {
	var raw json.RawMessage
	if err := s.do(ctx, "status", http.MethodGet, "/v1/chains", nil, &raw); err != nil {
		return nil, err
	}
	r, err := decodeStatus("status", raw)
	if err != nil {
		return nil, s.badReply("status", err)
	}
	var keep []ChainStatus
	for _, c := range r.Chains {
		if wanted(spec, c.ChainID) {
			keep = append(keep, c)
		}
	}
	r.Chains = keep
	return r, statusError("status", r)
}

// Release drops the agent's claim (DELETE /v1/agents/{agent}); with remove its jumps
// are removed from the kernel too, and the report is the removal's. The spec is not
// used: the claim is the agent's whole claim. ErrNotFound when it holds none.
func (s *Socket) Release(ctx context.Context, _ Spec, remove bool) (*ApplyReport, error) {
	p := s.agentPath()
	if remove {
		p += "?remove=true"
	}
	var ok struct {
		Removed bool            `json:"removed"`
		Report  json.RawMessage `json:"report"`
	}
	if err := s.do(ctx, "release", http.MethodDelete, p, nil, &ok); err != nil {
		return nil, err
	}
	if len(ok.Report) == 0 || string(ok.Report) == "null" {
		return nil, nil
	}
	r, err := decodeApply("release", ok.Report)
	if err != nil {
		return nil, s.badReply("release", err)
	}
	return r, applyError("release", r)
}

// Claim is the agent's stored claim (GET /v1/agents/{agent}), as a Spec of its chains;
// ErrNotFound when it holds none.
func (s *Socket) Claim(ctx context.Context) (Spec, error) {
	var ok struct {
		Chains []Chain `json:"chains"`
	}
	if err := s.do(ctx, "claim", http.MethodGet, s.agentPath(), nil, &ok); err != nil {
		return Spec{}, err
	}
	return Spec{Chains: ok.Chains}, nil
}

// CloseIdleConnections closes the kept-alive connections to the daemon.
func (s *Socket) CloseIdleConnections() { s.http.CloseIdleConnections() }

func (s *Socket) agentPath() string { return "/v1/agents/" + url.PathEscape(s.agent) }

// wanted tells whether a report entry is about one of the spec's chains (every entry
// when the spec names none).
func wanted(spec Spec, id ChainID) bool {
	if len(spec.Chains) == 0 {
		return true
	}
	for _, c := range spec.Chains {
		if c.Table == id.Table && c.Chain == id.Chain {
			return true
		}
	}
	return false
}

// maxReply bounds what is read of a response.
const maxReply = 64 << 20

// do sends one request and decodes a 200 body into out, or returns the *Error of any
// other response.
func (s *Socket) do(ctx context.Context, op, method, path string, body []byte, out interface{}) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://jumpset"+path, rd)
	if err != nil {
		return &Error{Op: op, Kind: ErrInternal, Err: err}
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.http.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return &Error{Op: op, Kind: ErrUnavailable, Message: fmt.Sprintf("%s: %v", s.path, ctx.Err()), Err: ctx.Err()}
		}
		return &Error{Op: op, Kind: ErrUnavailable, Message: fmt.Sprintf("cannot reach the jumpset daemon at %s: %v", s.path, unwrapURL(err)), Err: unwrapURL(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxReply))
	if err != nil {
		return &Error{Op: op, Kind: ErrUnavailable, HTTPStatus: resp.StatusCode, Message: fmt.Sprintf("reading the daemon's reply: %v", err), Err: err}
	}
	if resp.StatusCode == http.StatusOK {
		if err := json.Unmarshal(data, out); err != nil {
			return s.badReply(op, err)
		}
		return nil
	}
	var ej errorJSON
	if err := json.Unmarshal(data, &ej); err != nil {
		ej = errorJSON{Error: fmt.Sprintf("%s (%s)", resp.Status, bytes.TrimSpace(data))}
	}
	var kind error
	switch resp.StatusCode {
	case http.StatusAccepted:
		kind = ErrHeld
		if ej.Error == "" {
			ej.Error = fmt.Sprintf("the daemon holds off writes (%s): %s; it applies the claim when it resumes", ej.State, ej.Reason)
		}
	case http.StatusBadRequest, http.StatusRequestEntityTooLarge:
		kind = ErrConfig
	case http.StatusForbidden:
		kind = ErrPrivilege
	case http.StatusNotFound:
		kind = ErrNotFound
	case http.StatusConflict:
		kind = ErrConflict
	case http.StatusServiceUnavailable:
		kind = ErrUnavailable
	case http.StatusInternalServerError:
		kind = ErrInternal
	}
	e := ej.toError(op, kind)
	e.HTTPStatus = resp.StatusCode
	if e.Message == "" {
		e.Message = resp.Status
	}
	return e
}

// badReply is the error for a reply that is not the contract's.
func (s *Socket) badReply(op string, err error) *Error {
	return &Error{Op: op, Kind: ErrInternal, Message: fmt.Sprintf("the daemon at %s sent a reply this client cannot read: %v", s.path, err), Err: err}
}

func unwrapURL(err error) error {
	var u *url.Error
	if errors.As(err, &u) {
		return u.Err
	}
	return err
}

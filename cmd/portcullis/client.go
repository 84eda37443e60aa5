package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// apiClient talks to a running server's REST API for the admin commands.
// The token is sent as a bearer credential and never appears in an error.
type apiClient struct {
	base  *url.URL
	token string
	http  *http.Client
}

// maxResponse bounds what the CLI reads from a server: admin listings are
// small, and a misdirected URL must not make the CLI read a large download.
const maxResponse = 32 << 20

func newAPIClient(server, token string) (*apiClient, error) {
	u, err := parseServerURL(server)
	if err != nil {
		return nil, err
	}
	return &apiClient{base: u, token: token, http: &http.Client{Timeout: 30 * time.Second}}, nil
}

// parseServerURL accepts "http(s)://host[:port][/prefix]" and returns it
// without a trailing slash.
func parseServerURL(s string) (*url.URL, error) {
	u, err := url.Parse(strings.TrimRight(s, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
		return nil, configError{fmt.Errorf("server %q: want an http(s) URL such as http://localhost:8080", s)}
	}
	return u, nil
}

// apiError is a non-2xx answer, with the message of the server's problem
// details (or OAuth2 error) body.
type apiError struct {
	Status      int
	Message     string
	Explanation string
}

func (e *apiError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	if e.Explanation != "" {
		msg += ": " + e.Explanation
	}
	return fmt.Sprintf("%s (HTTP %d)", msg, e.Status)
}

// request is one API call. Body is JSON-encoded unless Form is set.
type request struct {
	Method string
	Path   string
	Query  url.Values
	Body   any
	Form   url.Values
}

// do sends req and decodes a 2xx JSON answer into out (if non-nil).
// Errors: *apiError for a server's refusal, a plain wrapped error when the
// server cannot be reached or answers something that is not JSON.
func (c *apiClient) do(ctx context.Context, req request, out any) error {
	u := *c.base
	u.Path = c.base.Path + req.Path
	u.RawQuery = req.Query.Encode()
	var body io.Reader
	contentType := ""
	switch {
	case req.Form != nil:
		body, contentType = strings.NewReader(req.Form.Encode()), "application/x-www-form-urlencoded"
	case req.Body != nil:
		b, err := json.Marshal(req.Body)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		body, contentType = bytes.NewReader(b), "application/json"
	}
	hr, err := http.NewRequestWithContext(ctx, req.Method, u.String(), body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	if contentType != "" {
		hr.Header.Set("Content-Type", contentType)
	}
	hr.Header.Set("Accept", "application/json")
	if c.token != "" {
		hr.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(hr)
	if err != nil {
		// url.Error names the URL, which never carries a credential here.
		return fmt.Errorf("contact server: %w", err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponse))
	if err != nil {
		return fmt.Errorf("read answer of %s %s: %w", req.Method, req.Path, err)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return decodeAPIError(resp.StatusCode, data)
	}
	if out == nil || resp.StatusCode == http.StatusNoContent {
		return nil
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("answer of %s %s is not the expected JSON (is %s a Portcullis server?): %w", req.Method, req.Path, c.base, err)
	}
	return nil
}

// decodeAPIError reads contaxy's problem details ({"code","message",
// "explanation"}) or an RFC 6749 error ({"error","error_description"}).
func decodeAPIError(status int, data []byte) *apiError {
	var p struct {
		Message          string `json:"message"`
		Explanation      string `json:"explanation"`
		Error            string `json:"error"`
		ErrorDescription string `json:"error_description"`
	}
	e := &apiError{Status: status}
	if json.Unmarshal(data, &p) == nil {
		e.Message, e.Explanation = p.Message, p.Explanation
		if e.Message == "" && p.Error != "" {
			e.Message, e.Explanation = p.Error, p.ErrorDescription
		}
	}
	return e
}

// statusOf returns the HTTP status of an apiError in err's chain, or 0.
func statusOf(err error) int {
	var ae *apiError
	if errors.As(err, &ae) {
		return ae.Status
	}
	return 0
}

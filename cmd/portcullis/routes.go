package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"

	"github.com/portcullis/portcullis/proxy/rules"
)

// Exit codes of `routes test`, beyond the common ones.
const (
	exitRoutesNoMatch = 1 // no rule matches: the unmatched policy applies
	exitRoutesRefused = 4 // the request would be refused with 400
)

// routeVerdict is what `routes test` reports.
type routeVerdict struct {
	Method     string         `json:"method"`
	Host       string         `json:"host"`
	Path       string         `json:"path"`
	Outcome    string         `json:"outcome"` // public, protected, no-match, refused
	Rule       string         `json:"rule,omitempty"`
	Permission string         `json:"permission,omitempty"`
	Upstream   string         `json:"upstream,omitempty"`
	Unmatched  string         `json:"unmatched,omitempty"`
	Refused    string         `json:"refused,omitempty"`
	Shadow     *shadowVerdict `json:"shadow,omitempty"`
}

// shadowVerdict is what the shadow rules would do with the request.
type shadowVerdict struct {
	Outcome    string `json:"outcome"`
	Rule       string `json:"rule,omitempty"`
	Permission string `json:"permission,omitempty"`
}

// routesTest is `portcullis routes test --config F METHOD URL`: which rule
// matches a request and the permission it needs, offline, for CI.
func routesTest(args []string, stdout, stderr io.Writer, environ []string) int {
	fs := flag.NewFlagSet("portcullis routes test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configFile := fs.String("config", "", "YAML configuration file with the routes")
	output := fs.String("o", "text", "output format: text or json")
	var headers headerFlags
	fs.Var(&headers, "H", "request header \"Name: value\" (repeatable), for rules that match on headers")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: portcullis routes test --config F [-o json] [-H 'Name: value'] METHOD URL")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() != 2 || (*output != "text" && *output != "json") {
		fs.Usage()
		return exitUsage
	}
	var cfgArgs []string
	if *configFile != "" {
		cfgArgs = []string{"--config", *configFile}
	}
	cfg, err := loadConfig("portcullis routes test", cfgArgs, environ)
	if err == nil {
		err = cfg.Validate()
	}
	if err != nil {
		fmt.Fprintf(stderr, "portcullis: configuration: %v\n", err)
		return exitConfig
	}
	method := strings.ToUpper(fs.Arg(0))
	host, target := "", fs.Arg(1)
	if strings.Contains(target, "://") {
		var ok bool
		_, host, target, ok = rules.SplitURL(target)
		if !ok {
			fmt.Fprintf(stderr, "portcullis: %q: want an http(s) URL or a path\n", fs.Arg(1))
			return exitUsage
		}
		host = rules.HostOnly(host)
	}
	v := routeVerdict{Method: method, Host: host}
	code := decideRoute(cfg, method, host, target, headers.h, &v)
	if *output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
		return code
	}
	fmt.Fprintf(stdout, "request:    %s %s%s\n", v.Method, v.Host, v.Path)
	switch v.Outcome {
	case "refused":
		fmt.Fprintf(stdout, "outcome:    refused with 400: %s\n", v.Refused)
	case "no-match":
		fmt.Fprintf(stdout, "outcome:    no rule matches (unmatched: %s)\n", v.Unmatched)
	default:
		fmt.Fprintf(stdout, "rule:       %s\noutcome:    %s\n", v.Rule, v.Outcome)
		if v.Permission != "" {
			fmt.Fprintf(stdout, "permission: %s\n", v.Permission)
		}
		if v.Upstream != "" {
			fmt.Fprintf(stdout, "upstream:   %s\n", v.Upstream)
		}
	}
	if v.Shadow != nil {
		fmt.Fprintf(stdout, "shadow:     %s %s %s\n", v.Shadow.Outcome, v.Shadow.Rule, v.Shadow.Permission)
	}
	return code
}

func decideRoute(cfg Config, method, host, target string, h http.Header, v *routeVerdict) int {
	rawPath, _, err := rules.SplitTarget(target)
	var p rules.Path
	if err == nil {
		p, err = rules.NormalizePath(rawPath, rules.PathOptions{AllowSemicolons: cfg.AllowSemicolons})
	}
	if err != nil {
		v.Path, v.Outcome, v.Refused = target, "refused", err.Error()
		return exitRoutesRefused
	}
	v.Path = p.String()
	req := rules.Request{Method: method, Host: host, Path: p, Header: h}
	active, _ := rules.Compile(cfg.Routes)
	m, err := active.Match(req)
	if err != nil {
		v.Outcome, v.Refused = "refused", err.Error()
		return exitRoutesRefused
	}
	if len(cfg.ShadowRoutes) > 0 {
		shadow, _ := rules.Compile(cfg.ShadowRoutes)
		sm, err := shadow.Match(req)
		v.Shadow = &shadowVerdict{Outcome: sm.Outcome.String(), Rule: sm.Rule, Permission: sm.Permission}
		if err != nil {
			v.Shadow.Outcome = "refused"
		}
	}
	if m.Outcome == rules.NoMatch {
		v.Outcome, v.Unmatched = "no-match", cfg.Unmatched
		return exitRoutesNoMatch
	}
	v.Outcome, v.Rule, v.Permission = m.Outcome.String(), m.Rule, m.Permission
	if m.Upstream != nil {
		v.Upstream = m.Upstream.String()
	} else if cfg.Upstream != "" {
		v.Upstream = cfg.Upstream
	}
	return exitOK
}

type headerFlags struct{ h http.Header }

func (f *headerFlags) String() string { return "" }

func (f *headerFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("%q: want \"Name: value\"", s)
	}
	if f.h == nil {
		f.h = http.Header{}
	}
	f.h.Add(strings.TrimSpace(name), strings.TrimSpace(value))
	return nil
}

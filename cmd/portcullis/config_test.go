package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestConfigPrecedence(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(file, []byte("listen: ':1111'\nmetrics_listen: ':2222'\ndata_dir: /from/file\nsession_ttl: 2h\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := []string{"PORTCULLIS_METRICS_LISTEN=:3333", "PORTCULLIS_DATA_DIR=/from/env", "PORTCULLIS_ETCD_ENDPOINTS=a:1, b:2", "UNRELATED=x"}
	cfg, err := loadConfig("t", []string{"--config", file, "--data-dir", "/from/flag", "--allow-query-token"}, env)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][2]string{
		"listen (file)":         {cfg.Listen, ":1111"},
		"metrics_listen (env)":  {cfg.MetricsListen, ":3333"},
		"data_dir (flag)":       {cfg.DataDir, "/from/flag"},
		"etcd_prefix (default)": {cfg.EtcdPrefix, "/portcullis/"},
		"endpoints (env list)":  {strings.Join(cfg.EtcdEndpoints, ","), "a:1,b:2"},
	}
	for name, v := range want {
		if v[0] != v[1] {
			t.Errorf("%s = %q, want %q", name, v[0], v[1])
		}
	}
	if cfg.LoginFailureLimit != 100 || cfg.LoginFailureWindow != time.Hour {
		t.Errorf("login failure budget %d per %v, want 100 per hour by default", cfg.LoginFailureLimit, cfg.LoginFailureWindow)
	}
	if cfg.SessionTTL != 2*time.Hour || !cfg.AllowQueryToken {
		t.Errorf("session_ttl %v allow_query_token %v", cfg.SessionTTL, cfg.AllowQueryToken)
	}
}

func TestConfigErrors(t *testing.T) {
	dir := t.TempDir()
	unknown := filepath.Join(dir, "u.yaml")
	_ = os.WriteFile(unknown, []byte("listen: ':1'\nlisten_adress: typo\n"), 0o600)
	for name, tc := range map[string]struct {
		args []string
		env  []string
	}{
		"unknown key in file": {[]string{"--config", unknown}, nil},
		"bad duration flag":   {[]string{"--session-ttl", "soon"}, nil},
		"bad bool env":        {nil, []string{"PORTCULLIS_ALLOW_QUERY_TOKEN=perhaps"}},
		"missing file":        {[]string{"--config", filepath.Join(dir, "nope.yaml")}, nil},
		"stray argument":      {[]string{"extra"}, nil},
	} {
		if _, err := loadConfig("t", tc.args, tc.env); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	cfg := defaultConfig()
	cfg.EtcdPrefix = "nope"
	cfg.LogFormat = "xml"
	cfg.MaxBodyBytes = 1
	cfg.PublicURL = "auth.example.com"
	cfg.TrustedProxies = []string{"10.0.0.0/33"}
	cfg.AllowedRedirectHosts = []string{"https://app.example.com"}
	cfg.LoginFailureLimit = 0
	err := cfg.Validate()
	if err == nil {
		t.Fatal("invalid config accepted")
	}
	for _, want := range []string{"etcd_prefix", "log_format", "max_body_bytes", "public_url", "trusted_proxies", "allowed_redirect_hosts", "login_failure_limit"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("validation error %q does not mention %s", err, want)
		}
	}
}

func TestObservabilityConfig(t *testing.T) {
	cfg, err := loadConfig("t", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !cfg.AccessLog || cfg.AuditLog != "stderr" || cfg.TracingEndpoint != "" || cfg.TracingSampleRatio != 1 {
		t.Fatalf("defaults: access_log %v audit_log %q tracing_endpoint %q ratio %v", cfg.AccessLog, cfg.AuditLog, cfg.TracingEndpoint, cfg.TracingSampleRatio)
	}
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("tracing_sample_ratio: 0.25\naudit_log: /var/log/audit.jsonl\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err = loadConfig("t", []string{"--config", file, "--access-log=false"}, []string{"PORTCULLIS_TRACING_ENDPOINT=collector:4318", "PORTCULLIS_TRACING_INSECURE=true"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.AccessLog || cfg.AuditLog != "/var/log/audit.jsonl" || cfg.TracingSampleRatio != 0.25 || cfg.TracingEndpoint != "collector:4318" || !cfg.TracingInsecure {
		t.Fatalf("got %+v", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--tracing-sample-ratio", "1.5"}, "tracing_sample_ratio"},
		{[]string{"--tracing-sample-ratio", "half"}, "not a number"},
		{[]string{"--tracing-endpoint", "ftp://collector:21"}, "tracing_endpoint"},
		{[]string{"--tracing-endpoint", "collector"}, "tracing_endpoint"},
		{[]string{"--tracing-endpoint", "http://user:pw@collector:4318"}, "tracing_endpoint"},
		{[]string{"--audit-log", " "}, "audit_log"},
	} {
		cfg, err := loadConfig("t", c.args, nil)
		if err == nil {
			err = cfg.Validate()
		}
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want one naming %s", c.args, err, c.want)
		}
	}
}

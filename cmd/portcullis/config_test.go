package main

import (
	"flag"
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

// TestConfigPrecedencePairs proves each pair of flags > env > file >
// defaults on one key, so that no source silently wins over a stronger one.
func TestConfigPrecedencePairs(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	if err := os.WriteFile(file, []byte("log_level: warn\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	flagArgs := []string{"--log-level", "error"}
	envVars := []string{"PORTCULLIS_LOG_LEVEL=debug"}
	fileArgs := []string{"--config", file}
	for _, tc := range []struct {
		name string
		args []string
		env  []string
		want string
	}{
		{"flag over env", flagArgs, envVars, "error"},
		{"flag over file", append(append([]string{}, fileArgs...), flagArgs...), nil, "error"},
		{"flag over env and file", append(append([]string{}, fileArgs...), flagArgs...), envVars, "error"},
		{"env over file", fileArgs, envVars, "debug"},
		{"env over default", nil, envVars, "debug"},
		{"file over default", fileArgs, nil, "warn"},
		{"file named by env over default", nil, []string{"PORTCULLIS_CONFIG=" + file}, "warn"},
		{"flag over default", flagArgs, nil, "error"},
		{"default", nil, nil, "info"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := loadConfig("t", tc.args, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.LogLevel != tc.want {
				t.Fatalf("log_level = %q, want %q", cfg.LogLevel, tc.want)
			}
		})
	}
}

// TestConfigFileErrorsArePrecise checks that each kind of mistake in the
// file is reported with the file, the line and the key.
func TestConfigFileErrorsArePrecise(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, doc string
		want      []string
	}{
		{"unknown key", "listen: ':1'\nlisten_adress: typo\n", []string{":2: listen_adress: unknown key"}},
		{"not an integer", "bcrypt_cost: twelve\n", []string{":1: bcrypt_cost:", `"twelve" is not an integer`}},
		{"not a duration", "\nsession_ttl: 10\n", []string{":2: session_ttl:", "not a duration"}},
		{"not a boolean", "open_registration: perhaps\n", []string{":1: open_registration:", "not a boolean"}},
		{"YAML 1.1 yes is not guessed", "open_registration: yes\n", []string{":1: open_registration:", `"yes" is not a boolean`}},
		{"mapping for a string", "listen:\n  host: x\n", []string{":1: listen: want a string, got a mapping"}},
		{"list for a boolean", "secure_cookies: [true]\n", []string{":1: secure_cookies: want a boolean, got a list"}},
		{"mapping inside a list", "etcd_endpoints:\n  - {a: b}\n", []string{":1: etcd_endpoints: list items must be scalars"}},
		{"key given twice", "listen: ':1'\nlog_level: info\nlisten: ':2'\n", []string{":3: listen: given twice (first on line 1)"}},
		{"unknown key in a rule", "routes:\n  - path: /x\n  - path: /y\n    permision: a#read\n", []string{":1: routes: item 2 (line 3):", `unknown field "permision"`}},
		{"rule of the wrong type", "shadow_routes:\n  - path: [a]\n", []string{":1: shadow_routes: item 1 (line 2):", "path"}},
		{"routes not a list", "routes: /x\n", []string{":1: routes: want a list of rules, got a scalar"}},
		{"not a mapping", "- listen\n", []string{":1: want a mapping of configuration keys"}},
		{"two errors at once", "nope: 1\nbcrypt_cost: x\n", []string{":1: nope: unknown key", ":2: bcrypt_cost:"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".yaml")
			if err := os.WriteFile(file, []byte(tc.doc), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := loadConfig("t", []string{"--config", file}, nil)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), file) || !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %s and %q", err, file, w)
				}
			}
		})
	}
}

func TestConfigFileValuesOfEveryShape(t *testing.T) {
	file := filepath.Join(t.TempDir(), "c.yaml")
	doc := "etcd_endpoints: [a:1, 'b:2']\nmax_body_bytes: 2048\nsession_ttl: 90m\nsecure_cookies: true\npublic_url:\n"
	if err := os.WriteFile(file, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig("t", []string{"--config", file}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, doc := range map[string]string{"empty": "", "comments only": "# nothing yet\n", "document marker": "---\n"} {
		empty := filepath.Join(t.TempDir(), "e.yaml")
		if err := os.WriteFile(empty, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		if got, err := loadConfig("t", []string{"--config", empty}, nil); err != nil || got.Listen != defaultConfig().Listen {
			t.Errorf("%s file: %v, listen %q", name, err, got.Listen)
		}
	}
	anchored := filepath.Join(t.TempDir(), "a.yaml")
	if err := os.WriteFile(anchored, []byte("jwt_issuer: &iss https://auth.example.com\npublic_url: *iss\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := loadConfig("t", []string{"--config", anchored}, nil); err != nil || got.PublicURL != "https://auth.example.com" {
		t.Errorf("alias: %v, public_url %q", err, got.PublicURL)
	}
	if strings.Join(cfg.EtcdEndpoints, ",") != "a:1,b:2" || cfg.MaxBodyBytes != 2048 || cfg.SessionTTL != 90*time.Minute || !cfg.SecureCookies || cfg.PublicURL != "" {
		t.Fatalf("decoded %+v", cfg)
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

// `portcullis serve --help` shows each option's default.
func TestFlagsShowDefaults(t *testing.T) {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg := defaultConfig()
	bindFlags(fs, &cfg)
	for name, want := range map[string]string{"listen": ":8080", "metrics-listen": ":9090", "data-dir": "./data", "session-ttl": "1h", "access-log": "true", "etcd-endpoints": ""} {
		if f := fs.Lookup(name); f == nil || f.DefValue != want {
			t.Errorf("--%s default %v, want %q", name, f, want)
		}
	}
}

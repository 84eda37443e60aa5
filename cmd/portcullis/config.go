package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	yaml3 "sigs.k8s.io/yaml/goyaml.v3"

	"github.com/portcullis/portcullis/proxy"
	"github.com/portcullis/portcullis/proxy/rules"
)

// Config is the whole configuration of `portcullis serve`. Every field can
// be set in the YAML file (key = yaml tag), as an environment variable
// (PORTCULLIS_ + upper-case key) and as a flag (key with '-' for '_').
// Precedence: flags > environment > file > defaults.
type Config struct {
	Listen        string `yaml:"listen" help:"address of the API, OAuth2 endpoints and pages"`
	MetricsListen string `yaml:"metrics_listen" help:"address of /metrics, /healthz and /readyz"`
	DataDir       string `yaml:"data_dir" help:"directory of the embedded etcd (used when no etcd endpoints are given)"`

	// Lifecycle: TLS of the listeners and graceful shutdown.
	TLSCertFile         string        `yaml:"tls_cert_file" help:"PEM certificate chain of the API listener; with tls_key_file it serves HTTPS (TLS 1.2+, HTTP/2) and reloads both files when they change"`
	TLSKeyFile          string        `yaml:"tls_key_file" secret:"file" help:"PEM private key of the API listener"`
	MetricsTLSCertFile  string        `yaml:"metrics_tls_cert_file" help:"PEM certificate chain of the metrics listener (may name the same files as the API; empty: plain HTTP)"`
	MetricsTLSKeyFile   string        `yaml:"metrics_tls_key_file" secret:"file" help:"PEM private key of the metrics listener"`
	ShutdownDelay       time.Duration `yaml:"shutdown_delay" help:"after SIGTERM, how long /readyz answers 503 while requests are still served, so load balancers stop sending new ones"`
	ShutdownGracePeriod time.Duration `yaml:"shutdown_grace_period" help:"after shutdown_delay, how long in-flight requests may take to finish before their connections are closed"`

	EtcdEndpoints    []string      `yaml:"etcd_endpoints" help:"comma-separated external etcd endpoints (empty: embedded etcd)"`
	EtcdPrefix       string        `yaml:"etcd_prefix" help:"key prefix of all Portcullis data in etcd"`
	EtcdUsername     string        `yaml:"etcd_username" help:"etcd user name"`
	EtcdPassword     string        `yaml:"etcd_password" secret:"true" help:"etcd password"`
	EtcdPasswordFile string        `yaml:"etcd_password_file" secret:"file" help:"file holding the etcd password"`
	EtcdCAFile       string        `yaml:"etcd_ca_file" help:"CA bundle for etcd's TLS certificate"`
	EtcdCertFile     string        `yaml:"etcd_cert_file" help:"TLS client certificate for etcd"`
	EtcdKeyFile      string        `yaml:"etcd_key_file" secret:"file" help:"TLS client key for etcd"`
	EtcdDialTimeout  time.Duration `yaml:"etcd_dial_timeout" help:"how long to wait for external etcd at start before giving up (exit 1; the whole open is bounded by this plus 5s)"`

	AdminPassword     string `yaml:"admin_password" secret:"true" help:"password of the admin user created on an empty store"`
	AdminPasswordFile string `yaml:"admin_password_file" secret:"file" help:"file holding the admin password"`

	AllowQueryToken  bool          `yaml:"allow_query_token" help:"accept the ct_token query parameter (insecure; contaxy compatibility)"`
	MaxBodyBytes     int64         `yaml:"max_body_bytes" help:"largest accepted request body"`
	OpenRegistration bool          `yaml:"open_registration" help:"let anyone create a user"`
	SecureCookies    bool          `yaml:"secure_cookies" help:"always mark cookies Secure (TLS ends in front of Portcullis)"`
	SessionTTL       time.Duration `yaml:"session_ttl" help:"lifetime of session JWTs"`
	BcryptCost       int           `yaml:"bcrypt_cost" help:"bcrypt cost for passwords (10-16)"`
	JWTSecretFile    string        `yaml:"jwt_secret_file" secret:"file" help:"file with an HS256 secret (contaxy compatibility); default: asymmetric keys in etcd"`
	JWTIssuer        string        `yaml:"jwt_issuer" help:"issuer (iss) of session JWTs; default: public_url, so it matches the OAuth2 metadata issuer, else \"portcullis\""`

	PublicURL            string        `yaml:"public_url" help:"absolute URL clients reach Portcullis at (OAuth2 issuer, origin of the sign-in forms); default: from each request"`
	TrustedProxies       []string      `yaml:"trusted_proxies" help:"comma-separated CIDRs or addresses of proxies whose X-Forwarded-*/X-Original-* headers are believed (default: none)"`
	AllowedRedirectHosts []string      `yaml:"allowed_redirect_hosts" help:"hosts (or .suffix for subdomains) that may be return targets after sign-in"`
	LoginFailureLimit    int           `yaml:"login_failure_limit" help:"failed password sign-ins allowed per account in login_failure_window, across replicas"`
	LoginFailureWindow   time.Duration `yaml:"login_failure_window" help:"counting window of login_failure_limit"`

	LogFormat string `yaml:"log_format" help:"json or text"`
	LogLevel  string `yaml:"log_level" help:"debug, info, warn or error"`

	// Observability: access and audit logs, tracing (docs/observability.md).
	AccessLog          bool    `yaml:"access_log" help:"write one access-log line per request to the log output"`
	AuditLog           string  `yaml:"audit_log" help:"where audit records of administrative changes go: stderr, stdout or a file path"`
	TracingEndpoint    string  `yaml:"tracing_endpoint" help:"OTLP/HTTP trace collector, http(s)://host:port[/path] or host:port (empty: tracing off)"`
	TracingSampleRatio float64 `yaml:"tracing_sample_ratio" help:"share of new traces sampled, 0 to 1 (sampled incoming traces are always followed)"`
	TracingInsecure    bool    `yaml:"tracing_insecure" help:"plain HTTP to a host:port tracing_endpoint"`

	// The sidecar: route rules, forward-auth and the reverse proxy.
	Upstream                   string        `yaml:"upstream" help:"reverse-proxy target: authorize and forward every request that is not a Portcullis endpoint"`
	APIPrefix                  string        `yaml:"api_prefix" help:"serve Portcullis's own endpoints under this path prefix (e.g. /.portcullis)"`
	GRPCListen                 string        `yaml:"grpc_listen" help:"address of the Envoy ext_authz gRPC service (empty: off)"`
	Routes                     []rules.Rule  `yaml:"routes" help:"route rules (configuration file only)"`
	ShadowRoutes               []rules.Rule  `yaml:"shadow_routes" help:"rules evaluated beside routes and only reported (configuration file only)"`
	Unmatched                  string        `yaml:"unmatched" help:"requests no route matches: deny or authenticated"`
	AllowSemicolons            bool          `yaml:"allow_semicolons" help:"accept ';' path parameters"`
	LoginURL                   string        `yaml:"login_url" help:"where browsers without credentials sign in (default: <api_prefix>/auth/login-page)"`
	LoginRedirect              bool          `yaml:"login_redirect" help:"answer browsers with a 302 to login_url (Traefik, Envoy, proxy; never nginx)"`
	AssertionAlways            bool          `yaml:"assertion_always" help:"add a signed X-Auth-Assertion JWT to every allow"`
	AssertionAudience          string        `yaml:"assertion_audience" help:"audience of assertions (default: the request's host)"`
	AssertionTTL               time.Duration `yaml:"assertion_ttl" help:"lifetime of assertions"`
	RateLimitSubjectRPS        int           `yaml:"rate_limit_subject_rps" help:"decisions per second per subject (0: off)"`
	RateLimitSubjectBurst      int           `yaml:"rate_limit_subject_burst" help:"burst of the per-subject limit"`
	RateLimitClientRPS         int           `yaml:"rate_limit_client_rps" help:"decisions per second per client address (0: off)"`
	RateLimitClientBurst       int           `yaml:"rate_limit_client_burst" help:"burst of the per-client limit"`
	ProxyDialTimeout           time.Duration `yaml:"proxy_dial_timeout" help:"upstream connect timeout"`
	ProxyResponseHeaderTimeout time.Duration `yaml:"proxy_response_header_timeout" help:"upstream response header timeout (504 after it)"`
	ProxyIdleConnTimeout       time.Duration `yaml:"proxy_idle_conn_timeout" help:"how long idle upstream connections are kept"`
	ProxyMaxIdleConnsPerHost   int           `yaml:"proxy_max_idle_conns_per_host" help:"idle upstream connections kept per host"`
	ProxyMaxBodyBytes          int64         `yaml:"proxy_max_body_bytes" help:"largest proxied request body (0: no limit)"`
	ProxyRewriteHost           bool          `yaml:"proxy_rewrite_host" help:"send the upstream's host as Host instead of the client's"`

	// Single sign-on through external OpenID Connect providers (docs/sso.md; sso.go).
	OIDCProviders           []oidcProviderConfig `yaml:"oidc_providers" help:"external OpenID Connect providers (configuration file only)"`
	DisablePasswordLogin    bool                 `yaml:"disable_password_login" help:"hide the password form: sign in only through oidc_providers"`
	OIDCUsersMaySetPassword bool                 `yaml:"oidc_users_may_set_password" help:"let users created by an OIDC sign-in set a password"`
}

func defaultConfig() Config {
	return Config{
		Listen:             ":8080",
		MetricsListen:      ":9090",
		DataDir:            "./data",
		EtcdPrefix:         "/portcullis/",
		EtcdDialTimeout:    10 * time.Second,
		MaxBodyBytes:       1 << 20,
		SessionTTL:         time.Hour,
		BcryptCost:         12,
		LoginFailureLimit:  100,
		LoginFailureWindow: time.Hour,
		LogFormat:          "json",
		LogLevel:           "info",
		AccessLog:          true,
		AuditLog:           "stderr",
		TracingSampleRatio: 1,
		Unmatched:          "deny",
		AssertionTTL:       time.Minute,

		ShutdownDelay:       5 * time.Second,
		ShutdownGracePeriod: 30 * time.Second,
	}
}

// loadConfig builds the configuration from defaults, the file named by
// --config (or PORTCULLIS_CONFIG), the environment and the flags in args.
func loadConfig(name string, args []string, environ []string) (Config, error) {
	cfg := defaultConfig()
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	configFile := fs.String("config", "", "YAML configuration file")
	setters := bindFlags(fs, &cfg)
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	env := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, "PORTCULLIS_") {
			env[k] = v
		}
	}
	file := *configFile
	if file == "" {
		file = env["PORTCULLIS_CONFIG"]
	}
	if file != "" {
		raw, err := os.ReadFile(file)
		if err != nil {
			return cfg, fmt.Errorf("read config: %w", err)
		}
		if err := applyFile(&cfg, raw, file); err != nil {
			return cfg, err
		}
	}
	var errs []error
	forEachField(&cfg, func(key string, v reflect.Value, _ reflect.StructField) {
		if s, ok := env["PORTCULLIS_"+strings.ToUpper(key)]; ok {
			if structured(v) {
				errs = append(errs, fmt.Errorf("PORTCULLIS_%s: %s can only be set in the configuration file", strings.ToUpper(key), key))
				return
			}
			if err := setValue(v, s); err != nil {
				errs = append(errs, fmt.Errorf("PORTCULLIS_%s: %w", strings.ToUpper(key), err))
			}
		}
	})
	// Flags win: apply the ones given on the command line again, last.
	fs.Visit(func(f *flag.Flag) {
		if set, ok := setters[f.Name]; ok {
			if err := set(); err != nil {
				errs = append(errs, err)
			}
		}
	})
	return cfg, errors.Join(errs...)
}

// applyFile sets the fields named in the YAML document raw, read from the
// file name. Values go through the same parser as flags and environment
// variables (so durations read "30s"); unknown keys, repeated keys and
// values of the wrong shape are errors, each reported as name:line: key.
func applyFile(cfg *Config, raw []byte, name string) error {
	var doc yaml3.Node
	if err := yaml3.Unmarshal(raw, &doc); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	if len(doc.Content) == 0 {
		return nil // an empty file sets nothing
	}
	top := doc.Content[0]
	if top.Kind == yaml3.ScalarNode && top.Tag == "!!null" {
		return nil // only comments
	}
	if top.Kind != yaml3.MappingNode {
		return fmt.Errorf("%s:%d: want a mapping of configuration keys, got %s", name, top.Line, nodeKind(top))
	}
	known := map[string]reflect.Value{}
	forEachField(cfg, func(key string, v reflect.Value, _ reflect.StructField) { known[key] = v })
	seen := map[string]int{}
	var errs []error
	for i := 0; i+1 < len(top.Content); i += 2 {
		k, val := top.Content[i], top.Content[i+1]
		if val.Kind == yaml3.AliasNode {
			val = val.Alias // "key: *anchor" means the anchored value
		}
		at := func(format string, a ...any) {
			errs = append(errs, fmt.Errorf("%s:%d: %s: %s", name, k.Line, k.Value, fmt.Sprintf(format, a...)))
		}
		if first, dup := seen[k.Value]; dup {
			at("given twice (first on line %d)", first)
			continue
		}
		seen[k.Value] = k.Line
		v, ok := known[k.Value]
		if !ok {
			at("unknown key")
			continue
		}
		if structured(v) {
			if err := decodeStructured(v, val); err != nil {
				at("%v", err)
			}
			continue
		}
		text, err := scalarText(v, val)
		if err != nil {
			at("%v", err)
			continue
		}
		if err := setValue(v, text); err != nil {
			at("%v", err)
		}
	}
	return errors.Join(errs...)
}

// scalarText turns a YAML value into the text form setValue parses: a
// scalar as written, a list of scalars joined by commas for list fields.
func scalarText(v reflect.Value, val *yaml3.Node) (string, error) {
	isList := v.Kind() == reflect.Slice
	switch {
	case val.Kind == yaml3.ScalarNode && val.Tag == "!!null":
		return "", nil
	case val.Kind == yaml3.ScalarNode:
		return val.Value, nil
	case val.Kind == yaml3.SequenceNode && isList:
		parts := make([]string, 0, len(val.Content))
		for _, p := range val.Content {
			if p.Kind != yaml3.ScalarNode {
				return "", fmt.Errorf("list items must be scalars, got %s on line %d", nodeKind(p), p.Line)
			}
			parts = append(parts, p.Value)
		}
		return strings.Join(parts, ","), nil
	}
	want := "a " + typeName(v.Type())
	return "", fmt.Errorf("want %s, got %s", want, nodeKind(val))
}

func nodeKind(n *yaml3.Node) string {
	switch n.Kind {
	case yaml3.MappingNode:
		return "a mapping"
	case yaml3.SequenceNode:
		return "a list"
	case yaml3.AliasNode:
		return "an alias"
	}
	return "a scalar"
}

// structured reports fields that only the YAML file can set (lists of
// objects such as route rules).
func structured(v reflect.Value) bool {
	return v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct
}

// decodeStructured decodes a YAML value into a structured field strictly:
// an unknown key inside a rule is an error, as at the top level.
func decodeStructured(v reflect.Value, node *yaml3.Node) error {
	switch {
	case node.Kind == yaml3.ScalarNode && node.Tag == "!!null":
		v.Set(reflect.Zero(v.Type()))
		return nil
	case node.Kind != yaml3.SequenceNode:
		return fmt.Errorf("want a list of %ss, got %s", strings.ToLower(v.Type().Elem().Name()), nodeKind(node))
	}
	list := reflect.MakeSlice(v.Type(), len(node.Content), len(node.Content))
	for i, item := range node.Content {
		// Item by item, so that a mistake names the line of its item.
		var val any
		err := item.Decode(&val)
		var raw []byte
		if err == nil {
			raw, err = json.Marshal(val)
		}
		if err == nil {
			dec := json.NewDecoder(bytes.NewReader(raw))
			dec.DisallowUnknownFields()
			err = dec.Decode(list.Index(i).Addr().Interface())
		}
		if err != nil {
			return fmt.Errorf("item %d (line %d): %s", i+1, item.Line, strings.TrimPrefix(err.Error(), "json: "))
		}
	}
	v.Set(list)
	return nil
}

// bindFlags defines a flag per field; parsed values are kept aside and
// applied by the returned setters, so that flags override env and file.
func bindFlags(fs *flag.FlagSet, cfg *Config) map[string]func() error {
	setters := map[string]func() error{}
	forEachField(cfg, func(key string, v reflect.Value, f reflect.StructField) {
		if structured(v) {
			return // file only
		}
		name := strings.ReplaceAll(key, "_", "-")
		// raw starts as the default, so that --help shows it; setters run
		// only for flags given on the command line.
		fv := &fieldValue{typ: v.Type(), isBool: v.Kind() == reflect.Bool, raw: flagDefault(v)}
		fs.Var(fv, name, f.Tag.Get("help")+" (env PORTCULLIS_"+strings.ToUpper(key)+")")
		setters[name] = func() error {
			raw := fv.raw
			if err := setValue(v, raw); err != nil {
				return fmt.Errorf("--%s: %w", name, err)
			}
			return nil
		}
	})
	return setters
}

// flagDefault is a field's default in the form the flag parses ("" for
// none, which --help leaves out).
func flagDefault(v reflect.Value) string {
	switch {
	case v.IsZero():
		return ""
	case v.Type() == reflect.TypeOf(time.Duration(0)):
		return shortDuration(time.Duration(v.Int()))
	case v.Kind() == reflect.Slice:
		parts := make([]string, v.Len())
		for i := range parts {
			parts[i] = fmt.Sprint(v.Index(i).Interface())
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v.Interface())
}

// fieldValue is a flag that validates its value when parsed and keeps it
// for bindFlags' setters to apply.
type fieldValue struct {
	typ    reflect.Type
	isBool bool
	raw    string
}

func (f *fieldValue) String() string { return f.raw }

func (f *fieldValue) Set(s string) error {
	f.raw = s
	return setValue(reflect.New(f.typ).Elem(), s)
}

// IsBoolFlag lets boolean options be given as a bare --flag.
func (f *fieldValue) IsBoolFlag() bool { return f.isBool }

func forEachField(cfg *Config, fn func(key string, v reflect.Value, f reflect.StructField)) {
	rv := reflect.ValueOf(cfg).Elem()
	rt := rv.Type()
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		key := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if key == "" || key == "-" {
			continue
		}
		fn(key, rv.Field(i), f)
	}
}

func setValue(v reflect.Value, s string) error {
	switch v.Interface().(type) {
	case string:
		v.SetString(s)
	case []string:
		var parts []string
		for _, p := range strings.Split(s, ",") {
			if p = strings.TrimSpace(p); p != "" {
				parts = append(parts, p)
			}
		}
		v.Set(reflect.ValueOf(parts))
	case bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return fmt.Errorf("%q is not a boolean", s)
		}
		v.SetBool(b)
	case int, int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not an integer", s)
		}
		v.SetInt(n)
	case float64:
		f, err := strconv.ParseFloat(s, 64)
		if err != nil {
			return fmt.Errorf("%q is not a number", s)
		}
		v.SetFloat(f)
	case time.Duration:
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%q is not a duration (e.g. 30s, 1h)", s)
		}
		v.SetInt(int64(d))
	default:
		return fmt.Errorf("unsupported type %s", v.Type())
	}
	return nil
}

// Validate reports every problem at once and has no side effects.
func (c Config) Validate() error {
	var errs []error
	if c.Listen == "" {
		errs = append(errs, errors.New("listen: required"))
	}
	if c.MetricsListen == "" {
		errs = append(errs, errors.New("metrics_listen: required"))
	}
	if len(c.EtcdEndpoints) == 0 && c.DataDir == "" {
		errs = append(errs, errors.New("data_dir: required when no etcd_endpoints are given"))
	}
	if !strings.HasPrefix(c.EtcdPrefix, "/") || !strings.HasSuffix(c.EtcdPrefix, "/") {
		errs = append(errs, fmt.Errorf("etcd_prefix %q: must start and end with /", c.EtcdPrefix))
	}
	if c.EtcdPassword != "" && c.EtcdPasswordFile != "" {
		errs = append(errs, errors.New("etcd_password and etcd_password_file: give one"))
	}
	if c.AdminPassword != "" && c.AdminPasswordFile != "" {
		errs = append(errs, errors.New("admin_password and admin_password_file: give one"))
	}
	if (c.EtcdCertFile == "") != (c.EtcdKeyFile == "") {
		errs = append(errs, errors.New("etcd_cert_file and etcd_key_file: give both or neither"))
	}
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		errs = append(errs, errors.New("tls_cert_file and tls_key_file: give both or neither"))
	}
	if (c.MetricsTLSCertFile == "") != (c.MetricsTLSKeyFile == "") {
		errs = append(errs, errors.New("metrics_tls_cert_file and metrics_tls_key_file: give both or neither"))
	}
	if c.ShutdownDelay < 0 {
		errs = append(errs, fmt.Errorf("shutdown_delay %v: must not be negative", c.ShutdownDelay))
	}
	if c.ShutdownGracePeriod < time.Second {
		errs = append(errs, fmt.Errorf("shutdown_grace_period %v: must be at least 1s", c.ShutdownGracePeriod))
	}
	if c.EtcdDialTimeout < 100*time.Millisecond || c.EtcdDialTimeout > 10*time.Minute {
		errs = append(errs, fmt.Errorf("etcd_dial_timeout %v: want between 100ms and 10m", c.EtcdDialTimeout))
	}
	if c.MaxBodyBytes < 1024 {
		errs = append(errs, fmt.Errorf("max_body_bytes %d: must be at least 1024", c.MaxBodyBytes))
	}
	if c.Upstream != "" {
		if _, err := rules.ParseUpstream(c.Upstream); err != nil {
			errs = append(errs, err)
		}
	}
	if c.APIPrefix != "" && (!strings.HasPrefix(c.APIPrefix, "/") || strings.HasSuffix(c.APIPrefix, "/") || strings.ContainsAny(c.APIPrefix, "?#%\\ ")) {
		errs = append(errs, fmt.Errorf("api_prefix %q: want a path such as /.portcullis (leading '/', no trailing '/')", c.APIPrefix))
	}
	if _, err := proxy.ParseTrustedProxies(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("trusted_proxies: %w", err))
	}
	if _, err := rules.Compile(c.Routes); err != nil {
		errs = append(errs, fmt.Errorf("routes: %w", err))
	}
	if _, err := rules.Compile(c.ShadowRoutes); err != nil {
		errs = append(errs, fmt.Errorf("shadow_routes: %w", err))
	}
	switch c.Unmatched {
	case proxy.UnmatchedDeny, proxy.UnmatchedAuthenticated:
	default:
		errs = append(errs, fmt.Errorf("unmatched %q: want deny or authenticated", c.Unmatched))
	}
	if c.AssertionTTL <= 0 || c.AssertionTTL > time.Hour {
		errs = append(errs, fmt.Errorf("assertion_ttl %v: want between 1s and 1h", c.AssertionTTL))
	}
	for _, n := range []struct {
		key string
		v   int
	}{{"rate_limit_subject_rps", c.RateLimitSubjectRPS}, {"rate_limit_subject_burst", c.RateLimitSubjectBurst}, {"rate_limit_client_rps", c.RateLimitClientRPS}, {"rate_limit_client_burst", c.RateLimitClientBurst}, {"proxy_max_idle_conns_per_host", c.ProxyMaxIdleConnsPerHost}} {
		if n.v < 0 {
			errs = append(errs, fmt.Errorf("%s %d: must not be negative", n.key, n.v))
		}
	}
	if c.ProxyMaxBodyBytes < 0 {
		errs = append(errs, fmt.Errorf("proxy_max_body_bytes %d: must not be negative", c.ProxyMaxBodyBytes))
	}
	if c.PublicURL != "" {
		u, err := url.Parse(c.PublicURL)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			errs = append(errs, fmt.Errorf("public_url %q: want an absolute http(s) URL without query or fragment", c.PublicURL))
		}
	}
	for _, h := range c.AllowedRedirectHosts {
		if strings.ContainsAny(h, "/:@ ") || strings.Trim(h, ".") == "" {
			errs = append(errs, fmt.Errorf("allowed_redirect_hosts: %q is not a host name (or .suffix)", h))
		}
	}
	if c.LoginFailureLimit < 1 {
		errs = append(errs, fmt.Errorf("login_failure_limit %d: must be at least 1", c.LoginFailureLimit))
	}
	if c.LoginFailureWindow < time.Second {
		errs = append(errs, fmt.Errorf("login_failure_window %v: must be at least 1s", c.LoginFailureWindow))
	}
	if err := c.validateOIDC(); err != nil {
		errs = append(errs, err)
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		errs = append(errs, fmt.Errorf("log_format %q: want json or text", c.LogFormat))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log_level %q: want debug, info, warn or error", c.LogLevel))
	}
	errs = append(errs, c.validateObservability()...)
	return errors.Join(errs...)
}

// secretFromFile returns value, or the trimmed contents of file when set.
func secretFromFile(value, file string) (string, error) {
	if file == "" {
		return value, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read secret file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// typeName names a field's type the way the reference and error messages
// show it to operators.
func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "duration"
	case t.Kind() == reflect.Slice && t.Elem().Kind() == reflect.Struct:
		return "list of " + strings.ToLower(t.Elem().Name()) + "s"
	case t.Kind() == reflect.Slice:
		return "list of " + typeName(t.Elem()) + "s"
	case t.Kind() == reflect.Bool:
		return "boolean"
	case t.Kind() == reflect.Int, t.Kind() == reflect.Int64:
		return "integer"
	}
	return t.String()
}

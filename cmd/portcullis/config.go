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

	"sigs.k8s.io/yaml"

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

	EtcdEndpoints    []string      `yaml:"etcd_endpoints" help:"comma-separated external etcd endpoints (empty: embedded etcd)"`
	EtcdPrefix       string        `yaml:"etcd_prefix" help:"key prefix of all Portcullis data in etcd"`
	EtcdUsername     string        `yaml:"etcd_username" help:"etcd user name"`
	EtcdPassword     string        `yaml:"etcd_password" secret:"true" help:"etcd password"`
	EtcdPasswordFile string        `yaml:"etcd_password_file" help:"file holding the etcd password"`
	EtcdCAFile       string        `yaml:"etcd_ca_file" help:"CA bundle for etcd's TLS certificate"`
	EtcdCertFile     string        `yaml:"etcd_cert_file" help:"TLS client certificate for etcd"`
	EtcdKeyFile      string        `yaml:"etcd_key_file" help:"TLS client key for etcd"`
	EtcdDialTimeout  time.Duration `yaml:"etcd_dial_timeout" help:"how long to wait for etcd at start"`

	AdminPassword     string `yaml:"admin_password" secret:"true" help:"password of the admin user created on an empty store"`
	AdminPasswordFile string `yaml:"admin_password_file" help:"file holding the admin password"`

	AllowQueryToken  bool          `yaml:"allow_query_token" help:"accept the ct_token query parameter (insecure; contaxy compatibility)"`
	MaxBodyBytes     int64         `yaml:"max_body_bytes" help:"largest accepted request body"`
	OpenRegistration bool          `yaml:"open_registration" help:"let anyone create a user"`
	SecureCookies    bool          `yaml:"secure_cookies" help:"always mark cookies Secure (TLS ends in front of Portcullis)"`
	SessionTTL       time.Duration `yaml:"session_ttl" help:"lifetime of session JWTs"`
	BcryptCost       int           `yaml:"bcrypt_cost" help:"bcrypt cost for passwords (10-16)"`
	JWTSecretFile    string        `yaml:"jwt_secret_file" help:"file with an HS256 secret (contaxy compatibility); default: asymmetric keys in etcd"`
	JWTIssuer        string        `yaml:"jwt_issuer" help:"issuer (iss) of session JWTs"`

	PublicURL            string        `yaml:"public_url" help:"absolute URL clients reach Portcullis at (OAuth2 issuer, origin of the sign-in forms); default: from each request"`
	TrustedProxies       []string      `yaml:"trusted_proxies" help:"comma-separated CIDRs or addresses of proxies whose X-Forwarded-*/X-Original-* headers are believed (default: none)"`
	AllowedRedirectHosts []string      `yaml:"allowed_redirect_hosts" help:"hosts (or .suffix for subdomains) that may be return targets after sign-in"`
	LoginFailureLimit    int           `yaml:"login_failure_limit" help:"failed password sign-ins allowed per account in login_failure_window, across replicas"`
	LoginFailureWindow   time.Duration `yaml:"login_failure_window" help:"counting window of login_failure_limit"`

	LogFormat string `yaml:"log_format" help:"json or text"`
	LogLevel  string `yaml:"log_level" help:"debug, info, warn or error"`

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
		JWTIssuer:          "portcullis",
		LogFormat:          "json",
		LogLevel:           "info",
		Unmatched:          "deny",
		AssertionTTL:       time.Minute,
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
		if err := applyFile(&cfg, raw); err != nil {
			return cfg, fmt.Errorf("config file %s: %w", file, err)
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

// applyFile sets the fields named in a YAML document. Values go through the
// same parser as flags and environment variables (so durations read
// "30s"); unknown keys are an error, never ignored.
func applyFile(cfg *Config, raw []byte) error {
	var doc map[string]any
	if err := yaml.Unmarshal(raw, &doc); err != nil {
		return err
	}
	known := map[string]reflect.Value{}
	forEachField(cfg, func(key string, v reflect.Value, _ reflect.StructField) { known[key] = v })
	var errs []error
	for k, val := range doc {
		v, ok := known[k]
		if !ok {
			errs = append(errs, fmt.Errorf("unknown key %q", k))
			continue
		}
		if structured(v) {
			if err := decodeStructured(v, val); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", k, err))
			}
			continue
		}
		text := fmt.Sprint(val)
		if list, isList := val.([]any); isList {
			parts := make([]string, len(list))
			for i, p := range list {
				parts[i] = fmt.Sprint(p)
			}
			text = strings.Join(parts, ",")
		} else if f, isFloat := val.(float64); isFloat {
			text = strconv.FormatFloat(f, 'f', -1, 64)
		}
		if err := setValue(v, text); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
		}
	}
	return errors.Join(errs...)
}

// structured reports fields that only the YAML file can set (lists of
// objects such as route rules).
func structured(v reflect.Value) bool {
	return v.Kind() == reflect.Slice && v.Type().Elem().Kind() == reflect.Struct
}

// decodeStructured decodes a YAML value into a structured field strictly:
// an unknown key inside a rule is an error, as at the top level.
func decodeStructured(v reflect.Value, val any) error {
	raw, err := json.Marshal(val)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	ptr := reflect.New(v.Type())
	if err := dec.Decode(ptr.Interface()); err != nil {
		return err
	}
	v.Set(ptr.Elem())
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
		fv := &fieldValue{typ: v.Type(), isBool: v.Kind() == reflect.Bool}
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

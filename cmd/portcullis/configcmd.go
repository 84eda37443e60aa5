package main

import (
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"reflect"
	"time"

	yaml3 "sigs.k8s.io/yaml/goyaml.v3"
)

//go:generate go run . config reference --output ../../docs/configuration.md

// redacted replaces every secret value that `config check` prints.
const redacted = "<redacted>"

// configCommand runs `portcullis config check|reference`.
func configCommand(args []string, stdout, stderr io.Writer, environ []string) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, "portcullis: usage: portcullis config check [--config F] [flags] | portcullis config reference [--output F]\n")
		return exitUsage
	}
	switch args[0] {
	case "check":
		return configCheck(args[1:], stdout, stderr, environ)
	case "reference":
		fs := flag.NewFlagSet("portcullis config reference", flag.ContinueOnError)
		fs.SetOutput(stderr)
		out := fs.String("output", "", "write the reference to this file instead of standard output")
		if err := fs.Parse(args[1:]); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return exitOK
			}
			return exitUsage
		}
		var buf bytes.Buffer
		writeConfigReference(&buf)
		if *out == "" {
			_, _ = stdout.Write(buf.Bytes())
			return exitOK
		}
		if err := os.WriteFile(*out, buf.Bytes(), 0o644); err != nil {
			fmt.Fprintf(stderr, "portcullis: %v\n", err)
			return exitError
		}
		return exitOK
	}
	fmt.Fprintf(stderr, "portcullis: unknown config command %q (want check or reference)\n", args[0])
	return exitUsage
}

// configCheck loads the configuration exactly as serve does, validates it,
// reads every secret file and key pair, and prints the effective
// configuration with secret values replaced by <redacted>.
func configCheck(args []string, stdout, stderr io.Writer, environ []string) int {
	cfg, err := loadConfig("portcullis config check", args, environ)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err == nil {
		err = cfg.Validate()
	}
	if err == nil {
		_, err = readSecrets(cfg)
	}
	if err != nil {
		fmt.Fprintf(stderr, "portcullis: configuration: %v\n", err)
		return exitConfig
	}
	out, err := effectiveYAML(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "portcullis: %v\n", err)
		return exitError
	}
	_, _ = stdout.Write(out)
	return exitOK
}

// secrets holds what serve reads from secret files (or takes from the
// configuration) before it starts anything.
type secrets struct {
	etcdPassword  string
	adminPassword string
	hmacSecret    []byte
}

// readSecrets reads every secret file and TLS key pair the configuration
// names, so that a missing or unreadable one stops the start (and fails
// `config check`) with the key that names it. Every problem is reported.
func readSecrets(cfg Config) (secrets, error) {
	var s secrets
	var errs []error
	var err error
	if s.etcdPassword, err = secretFromFile(cfg.EtcdPassword, cfg.EtcdPasswordFile); err != nil {
		errs = append(errs, fmt.Errorf("etcd_password_file: %w", err))
	}
	if s.adminPassword, err = secretFromFile(cfg.AdminPassword, cfg.AdminPasswordFile); err != nil {
		errs = append(errs, fmt.Errorf("admin_password_file: %w", err))
	}
	if cfg.JWTSecretFile != "" {
		v, err := secretFromFile("", cfg.JWTSecretFile)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("jwt_secret_file: %w", err))
		case v == "":
			errs = append(errs, fmt.Errorf("jwt_secret_file %s: the file is empty", cfg.JWTSecretFile))
		}
		s.hmacSecret = []byte(v)
	}
	for _, p := range []struct{ certKey, keyKey, cert, key string }{
		{"tls_cert_file", "tls_key_file", cfg.TLSCertFile, cfg.TLSKeyFile},
		{"metrics_tls_cert_file", "metrics_tls_key_file", cfg.MetricsTLSCertFile, cfg.MetricsTLSKeyFile},
	} {
		if p.cert == "" || p.key == "" {
			continue // Validate reports a half-given pair
		}
		if _, err := tls.LoadX509KeyPair(p.cert, p.key); err != nil {
			errs = append(errs, fmt.Errorf("%s/%s: %w", p.certKey, p.keyKey, err))
		}
	}
	if _, err := etcdTLS(cfg); err != nil {
		errs = append(errs, err)
	}
	return s, errors.Join(errs...)
}

// effectiveYAML renders cfg as a YAML document in the order of the Config
// struct. Secret values show as <redacted> when set; the paths of secret
// files are shown, their contents never read into the output. The output
// is a valid configuration file itself.
func effectiveYAML(cfg Config) ([]byte, error) {
	root := &yaml3.Node{Kind: yaml3.MappingNode}
	var errs []error
	forEachField(&cfg, func(key string, v reflect.Value, f reflect.StructField) {
		val := &yaml3.Node{}
		switch {
		case f.Tag.Get("secret") == "true":
			if v.String() == "" {
				val.SetString("")
			} else {
				val.SetString(redacted)
			}
		case v.Type() == reflect.TypeOf(time.Duration(0)):
			val.SetString(time.Duration(v.Int()).String())
		case structured(v):
			// Through JSON, so that rules show with the keys the file uses.
			raw, err := json.Marshal(v.Interface())
			var generic any
			if err == nil {
				err = json.Unmarshal(raw, &generic)
			}
			if err == nil {
				err = val.Encode(generic)
			}
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", key, err))
			}
		default:
			if err := val.Encode(v.Interface()); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", key, err))
			}
		}
		root.Content = append(root.Content, &yaml3.Node{Kind: yaml3.ScalarNode, Value: key}, val)
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	enc := yaml3.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(root); err != nil {
		return nil, err
	}
	if err := enc.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

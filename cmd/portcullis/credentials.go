package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"time"

	"sigs.k8s.io/yaml"
)

// credentials is the user's credentials file: the token of each server the
// user logged in to, and which server commands talk to by default.
type credentials struct {
	CurrentServer string       `json:"current_server,omitempty"`
	Logins        []savedLogin `json:"logins,omitempty"`
}

// savedLogin is one server's token as saved by `portcullis login`.
type savedLogin struct {
	Server    string     `json:"server"`
	Username  string     `json:"username,omitempty"`
	Token     string     `json:"token"`
	ExpiresAt *time.Time `json:"expires_at,omitempty"`
}

// credentialsPath is PORTCULLIS_CREDENTIALS, else credentials.yaml under
// $XDG_CONFIG_HOME/portcullis, else under $HOME/.config/portcullis.
func credentialsPath(env map[string]string) (string, error) {
	if p := env["PORTCULLIS_CREDENTIALS"]; p != "" {
		return p, nil
	}
	if d := env["XDG_CONFIG_HOME"]; d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "portcullis", "credentials.yaml"), nil
	}
	if h := env["HOME"]; h != "" {
		return filepath.Join(h, ".config", "portcullis", "credentials.yaml"), nil
	}
	return "", configError{errors.New("cannot place the credentials file: set HOME, XDG_CONFIG_HOME or PORTCULLIS_CREDENTIALS")}
}

// loadCredentials reads the file; a missing file is an empty one. Unknown
// keys are an error, as in every Portcullis file.
func loadCredentials(path string) (credentials, error) {
	var c credentials
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, configError{fmt.Errorf("read credentials: %w", err)}
	}
	if err := yaml.UnmarshalStrict(data, &c); err != nil {
		return c, configError{fmt.Errorf("credentials file %s: %w", path, err)}
	}
	return c, nil
}

// save writes the file atomically with mode 0600 in a 0700 directory: it
// holds bearer tokens.
func (c credentials) save(path string) error {
	data, err := yaml.Marshal(c)
	if err != nil {
		return fmt.Errorf("encode credentials: %w", err)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create credentials directory: %w", err)
	}
	// The directory may predate us with a wider mode; it is ours to tighten
	// only when it is the portcullis directory we would have created.
	if filepath.Base(dir) == "portcullis" {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("restrict credentials directory: %w", err)
		}
	}
	tmp, err := os.CreateTemp(dir, ".credentials-*.yaml") // created 0600
	if err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write credentials: %w", err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write credentials: %w", err)
	}
	return nil
}

// login returns the saved login for server, if any.
func (c credentials) login(server string) (savedLogin, bool) {
	i := slices.IndexFunc(c.Logins, func(l savedLogin) bool { return l.Server == server })
	if i < 0 {
		return savedLogin{}, false
	}
	return c.Logins[i], true
}

// put saves l, replacing an earlier login to the same server, and makes
// its server the current one.
func (c *credentials) put(l savedLogin) {
	c.remove(l.Server)
	c.Logins = append(c.Logins, l)
	c.CurrentServer = l.Server
}

// remove forgets server's login.
func (c *credentials) remove(server string) {
	c.Logins = slices.DeleteFunc(c.Logins, func(l savedLogin) bool { return l.Server == server })
	if c.CurrentServer == server {
		c.CurrentServer = ""
		if n := len(c.Logins); n > 0 {
			c.CurrentServer = c.Logins[n-1].Server
		}
	}
}

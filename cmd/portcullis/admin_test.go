package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// cliUser runs admin commands in-process through run() as one user: its
// own credentials file, the given server.
type cliUser struct {
	t       *testing.T
	env     []string
	outputs *strings.Builder // everything printed, to scan for secrets
}

func newCLIUser(t *testing.T, server string, all *strings.Builder, extraEnv ...string) *cliUser {
	dir := t.TempDir()
	env := []string{"HOME=" + dir, "XDG_CONFIG_HOME=" + filepath.Join(dir, "config"), "PORTCULLIS_SERVER=http://" + server}
	return &cliUser{t: t, env: append(env, extraEnv...), outputs: all}
}

func (u *cliUser) credentialsFile() string {
	return filepath.Join(strings.TrimPrefix(u.env[1], "XDG_CONFIG_HOME="), "portcullis", "credentials.yaml")
}

// run returns the exit code, stdout and stderr of `portcullis args...`.
func (u *cliUser) run(args ...string) (int, string, string) {
	u.t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(context.Background(), args, &stdout, &stderr, u.env)
	fmt.Fprintf(u.outputs, "$ %s\n%s%s", strings.Join(args, " "), stdout.String(), stderr.String())
	return code, stdout.String(), stderr.String()
}

// must runs a command that must exit with want.
func (u *cliUser) must(want int, args ...string) string {
	u.t.Helper()
	code, out, errOut := u.run(args...)
	if code != want {
		u.t.Fatalf("portcullis %s: exit %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), code, want, out, errOut)
	}
	return out
}

// json runs a command with -o json that must exit with want and decodes
// its output.
func (u *cliUser) json(want int, v any, args ...string) {
	u.t.Helper()
	out := u.must(want, append(args, "-o", "json")...)
	if err := json.Unmarshal([]byte(out), v); err != nil {
		u.t.Fatalf("portcullis %s -o json: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// TestAdminCommandLine drives every admin command against a real server
// (the built binary with embedded etcd) over HTTP.
func TestAdminCommandLine(t *testing.T) {
	api, _, _, _ := startServe(t, "--data-dir", t.TempDir(), "--admin-password", "adminpassword")
	var outputs strings.Builder
	admin := newCLIUser(t, api, &outputs)
	alice := newCLIUser(t, api, &outputs)

	// A wrong password: exit 4, the server's reason, nothing saved.
	code, _, errOut := admin.run("login", "--username", "admin", "--password-file", writeFile(t, t.TempDir(), "secret", "wrong-password\n"))
	if code != exitAuth || !strings.Contains(errOut, "login failed") {
		t.Fatalf("wrong password: exit %d, stderr %q", code, errOut)
	}
	if _, err := os.Stat(admin.credentialsFile()); !os.IsNotExist(err) {
		t.Fatalf("credentials file after a failed login: %v", err)
	}

	admin.must(exitOK, "login", "--username", "admin", "--password-file", writeFile(t, t.TempDir(), "secret", "adminpassword\n"))
	fi, err := os.Stat(admin.credentialsFile())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials file: %v, mode %v", err, fi.Mode())
	}
	di, _ := os.Stat(filepath.Dir(admin.credentialsFile()))
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("credentials dir mode %v", di.Mode())
	}
	creds, err := loadCredentials(admin.credentialsFile())
	adminLogin, ok := creds.login("http://" + api)
	if err != nil || !ok || adminLogin.Token == "" || creds.CurrentServer != "http://"+api {
		t.Fatalf("saved credentials: %+v %v", creds, err)
	}

	// Users.
	var created struct {
		ID       string `json:"id"`
		Username string `json:"username"`
		Email    string `json:"email"`
		Disabled bool   `json:"disabled"`
	}
	admin.json(exitOK, &created, "users", "create", "--username", "alice", "--password-file", writeFile(t, t.TempDir(), "secret", "alice-password-1"))
	if created.ID == "" || created.Username != "alice" {
		t.Fatalf("created user: %+v", created)
	}
	aliceSubject := "users/" + created.ID
	admin.must(exitConflict, "users", "create", "--username", "alice")
	admin.must(exitUsage, "users", "create")
	var users []map[string]any
	admin.json(exitOK, &users, "users", "list")
	if len(users) != 2 {
		t.Fatalf("users list: %v", users)
	}
	if out := admin.must(exitOK, "users", "list"); !strings.Contains(out, "USERNAME") || !strings.Contains(out, "alice") {
		t.Fatalf("users list table:\n%s", out)
	}
	if out := admin.must(exitOK, "users", "get", "alice"); !strings.Contains(out, created.ID) {
		t.Fatalf("users get by name:\n%s", out)
	}
	admin.must(exitNotFound, "users", "get", "nobody")
	var updated struct {
		Email    string `json:"email"`
		Disabled bool   `json:"disabled"`
	}
	admin.json(exitOK, &updated, "users", "update", created.ID, "--email", "alice@example.com")
	if updated.Email != "alice@example.com" {
		t.Fatalf("update: %+v", updated)
	}
	admin.must(exitConflict, "users", "update", "alice", "--username", "admin")
	admin.must(exitUsage, "users", "update", "alice", "--disabled=maybe")
	admin.must(exitUsage, "users", "update", "alice")

	// Grants and resources.
	admin.must(exitOK, "grants", "add", aliceSubject, "projects/p#read")
	var perms []string
	admin.json(exitOK, &perms, "grants", "list", aliceSubject, "--direct")
	if !contains(perms, "projects/p#read") {
		t.Fatalf("grants list: %v", perms)
	}
	var resources []string
	admin.json(exitOK, &resources, "resources", "list", "projects/p#read")
	if !contains(resources, aliceSubject) {
		t.Fatalf("resources list: %v", resources)
	}
	admin.must(exitError, "grants", "add", aliceSubject, "not a permission##")

	// Alice logs in on her own; her token verifies read but not write.
	alice.must(exitOK, "login", "--username", "alice@example.com", "--password-file", writeFile(t, t.TempDir(), "secret", "alice-password-1"))
	var v verifyOutcome
	alice.json(exitOK, &v, "verify", "projects/p#read")
	if !v.Allowed || v.Subject != aliceSubject {
		t.Fatalf("verify read: %+v", v)
	}
	alice.json(exitDenied, &v, "verify", "projects/p/x#write")
	if v.Allowed || v.Reason == "" {
		t.Fatalf("verify write: %+v", v)
	}
	// Only admins may ask why.
	alice.must(exitAuth, "verify", "--explain", "projects/p#read")

	aliceCreds, _ := loadCredentials(alice.credentialsFile())
	aliceLogin, _ := aliceCreds.login("http://" + api)
	aliceTokenFile := writeFile(t, t.TempDir(), "secret", aliceLogin.Token)
	admin.json(exitOK, &v, "verify", "--explain", "--subject-token-file", aliceTokenFile, "projects/p/x#read")
	if !v.Allowed || v.Explanation == nil || v.Explanation.Grant != "projects/p#read" || v.Explanation.Holder != aliceSubject {
		t.Fatalf("explained allow: %+v %+v", v, v.Explanation)
	}
	// Through a role: the explanation names the role that granted.
	admin.must(exitOK, "grants", "add", "roles/readers", "projects/q#read")
	admin.must(exitOK, "grants", "add", aliceSubject, "roles/readers")
	out := admin.must(exitOK, "verify", "--explain", "--subject-token-file", aliceTokenFile, "projects/q/doc#read")
	if !strings.Contains(out, "grant:       projects/q#read held by roles/readers via roles/readers") {
		t.Fatalf("explained allow through a role:\n%s", out)
	}
	admin.json(exitDenied, &v, "verify", "--explain", "--subject-token-file", aliceTokenFile, "projects/p#write")
	if v.Explanation == nil || v.Explanation.Missing != "grant" {
		t.Fatalf("explained denial (grant): %+v %+v", v, v.Explanation)
	}
	if out := admin.must(exitDenied, "verify", "--explain", "--subject-token-file", aliceTokenFile, "projects/p#write"); !strings.Contains(out, "missing:") {
		t.Fatalf("explained denial table:\n%s", out)
	}
	admin.must(exitUsage, "verify", "projects/p#bogus")

	// Tokens: alice makes a read-only API token; it is printed once.
	tok := strings.TrimSpace(alice.must(exitOK, "tokens", "create", "--scope", "projects/p#read", "--description", "ci"))
	if tok == "" || strings.ContainsAny(tok, " \n") {
		t.Fatalf("tokens create printed %q", tok)
	}
	var toks []struct {
		ID          string   `json:"id"`
		Description string   `json:"description"`
		Scopes      []string `json:"scopes"`
	}
	alice.json(exitOK, &toks, "tokens", "list")
	if len(toks) != 1 || toks[0].Description != "ci" {
		t.Fatalf("tokens list: %+v", toks)
	}
	if strings.Contains(alice.must(exitOK, "tokens", "list"), tok) {
		t.Fatal("tokens list printed the token")
	}
	tokFile := writeFile(t, t.TempDir(), "secret", tok+"\n")
	admin.json(exitDenied, &v, "verify", "--explain", "--subject-token-file", tokFile, "projects/p#write")
	if v.Explanation == nil || v.Explanation.Missing != "scope" {
		t.Fatalf("explained denial (scope): %+v %+v", v, v.Explanation)
	}
	// The token works from PORTCULLIS_TOKEN and --token-file, without a login.
	ci := newCLIUser(t, api, &outputs, "PORTCULLIS_TOKEN="+tok)
	ci.must(exitOK, "verify", "projects/p#read")
	ci2 := newCLIUser(t, api, &outputs)
	ci2.must(exitOK, "verify", "projects/p#read", "--token-file", tokFile)
	ci2.must(exitAuth, "verify", "projects/p#read") // not logged in
	alice.must(exitOK, "tokens", "revoke", toks[0].ID)
	alice.must(exitNotFound, "tokens", "revoke", toks[0].ID)
	ci.must(exitAuth, "verify", "projects/p#read")

	// OAuth2 clients.
	var cl struct {
		ID     string `json:"client_id"`
		Secret string `json:"client_secret"`
	}
	admin.json(exitOK, &cl, "clients", "create", "--name", "App", "--id", "app", "--redirect-uri", "https://app.example.com/cb", "--scope", "projects/p#read")
	if cl.ID != "app" || cl.Secret == "" {
		t.Fatalf("clients create: %+v", cl)
	}
	admin.must(exitConflict, "clients", "create", "--name", "App", "--id", "app", "--redirect-uri", "https://app.example.com/cb")
	var cls []map[string]any
	admin.json(exitOK, &cls, "clients", "list")
	if len(cls) != 1 || cls[0]["client_id"] != "app" {
		t.Fatalf("clients list: %v", cls)
	}
	if out := admin.must(exitOK, "clients", "get", "app"); !strings.Contains(out, "https://app.example.com/cb") || strings.Contains(out, cl.Secret) {
		t.Fatalf("clients get:\n%s", out)
	}
	alice.must(exitAuth, "clients", "list")
	admin.must(exitOK, "clients", "delete", "app")
	admin.must(exitNotFound, "clients", "get", "app")

	// Key rotation: admins only; the admin's own session (signed with the
	// retired key) keeps working.
	var rotated struct {
		Kid string `json:"kid"`
	}
	admin.json(exitOK, &rotated, "keys", "rotate")
	if rotated.Kid == "" {
		t.Fatal("keys rotate: no kid")
	}
	alice.must(exitAuth, "keys", "rotate")
	admin.must(exitOK, "users", "list")

	// Removing the grant takes effect.
	admin.must(exitOK, "grants", "remove", aliceSubject, "projects/p#read")
	admin.json(exitOK, &perms, "grants", "list", aliceSubject, "--direct")
	if contains(perms, "projects/p#read") {
		t.Fatalf("grant still listed: %v", perms)
	}
	alice.must(exitDenied, "verify", "--fresh", "projects/p#read")

	// Disabling ends the user's sessions; enabling lets it sign in again.
	admin.json(exitOK, &updated, "users", "update", "alice", "--disabled")
	if !updated.Disabled {
		t.Fatalf("not disabled: %+v", updated)
	}
	alice.must(exitAuth, "users", "get", "me")
	admin.json(exitOK, &updated, "users", "update", "alice", "--disabled=false")
	if updated.Disabled {
		t.Fatalf("still disabled: %+v", updated)
	}

	// A new password: the old one fails, the new one works.
	admin.must(exitOK, "users", "passwd", "alice", "--password-file", writeFile(t, t.TempDir(), "secret", "alice-password-2"))
	alice.must(exitAuth, "login", "--username", "alice", "--password-file", writeFile(t, t.TempDir(), "secret", "alice-password-1"))
	alice.must(exitOK, "login", "--username", "alice", "--password-file", writeFile(t, t.TempDir(), "secret", "alice-password-2"))
	var me struct {
		ID string `json:"id"`
	}
	alice.json(exitOK, &me, "users", "get", "me")
	if me.ID != created.ID {
		t.Fatalf("users get me: %+v", me)
	}
	aliceCreds, _ = loadCredentials(alice.credentialsFile())
	aliceLogin2, _ := aliceCreds.login("http://" + api)
	alice.must(exitOK, "logout")
	alice.must(exitAuth, "users", "get", "me")
	// logout revoked the token at the server, not only in the file.
	ci2.must(exitAuth, "users", "get", "me", "--token-file", writeFile(t, t.TempDir(), "secret", aliceLogin2.Token))
	if c, _ := loadCredentials(alice.credentialsFile()); len(c.Logins) != 0 {
		t.Fatalf("logout kept %+v", c)
	}

	admin.must(exitOK, "users", "delete", "alice")
	admin.must(exitNotFound, "users", "get", created.ID)

	// Never a password or a saved token in any output.
	for _, secret := range []string{"adminpassword", "alice-password-1", "alice-password-2", adminLogin.Token, aliceLogin.Token, aliceLogin2.Token} {
		if strings.Contains(outputs.String(), secret) {
			t.Errorf("output contains a secret (%d bytes)", len(secret))
		}
	}
}

// TestLoginPasswordStdin runs the built binary: the password piped on
// stdin, and a clear refusal when stdin is no terminal and no source given.
func TestLoginPasswordStdin(t *testing.T) {
	api, _, _, _ := startServe(t, "--data-dir", t.TempDir(), "--admin-password", "adminpassword")
	creds := filepath.Join(t.TempDir(), "creds.yaml")
	login := func(stdin string, args ...string) (int, string) {
		cmd := exec.Command(binPath, append([]string{"login", "--server", "http://" + api, "--username", "admin"}, args...)...)
		cmd.Env = []string{"PORTCULLIS_CREDENTIALS=" + creds}
		cmd.Stdin = strings.NewReader(stdin)
		out, err := cmd.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := login("adminpassword\n"); code != exitUsage || !strings.Contains(out, "not a terminal") {
		t.Fatalf("no password source: exit %d\n%s", code, out)
	}
	if code, out := login("wrong\n", "--password-stdin"); code != exitAuth {
		t.Fatalf("wrong password: exit %d\n%s", code, out)
	}
	if code, out := login("adminpassword\n", "--password-stdin"); code != exitOK {
		t.Fatalf("login: exit %d\n%s", code, out)
	}
	if fi, err := os.Stat(creds); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("credentials: %v %v", fi, err)
	}
	cmd := exec.Command(binPath, "users", "list", "-o", "json")
	cmd.Env = []string{"PORTCULLIS_CREDENTIALS=" + creds}
	out, err := cmd.Output()
	var users []map[string]any
	if err != nil || json.Unmarshal(out, &users) != nil || len(users) != 1 {
		t.Fatalf("users list with the saved login: %v\n%s", err, out)
	}
	// verify reads the token to check from stdin.
	saved, err := loadCredentials(creds)
	if err != nil || len(saved.Logins) != 1 {
		t.Fatalf("saved: %v", err)
	}
	cmd = exec.Command(binPath, "verify", "--subject-token-stdin", "users#admin")
	cmd.Env = []string{"PORTCULLIS_CREDENTIALS=" + creds}
	cmd.Stdin = strings.NewReader(saved.Logins[0].Token + "\n")
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "decision:    allowed") {
		t.Fatalf("verify --subject-token-stdin: %v\n%s", err, out)
	}
}

// TestAdminUsageAndConfigErrors needs no server: mistakes are caught
// before any request.
func TestAdminUsageAndConfigErrors(t *testing.T) {
	home := t.TempDir()
	badCreds := writeFile(t, t.TempDir(), "secret", "current_server: http://x\nlogins: []\nextra: 1\n")
	cases := []struct {
		name string
		env  []string
		args []string
		want int
		msg  string
	}{
		{"unknown subcommand", nil, []string{"users", "frob"}, exitUsage, `unknown command "users frob"`},
		{"group without subcommand", nil, []string{"grants"}, exitUsage, "grants add"},
		{"group help", nil, []string{"tokens", "--help"}, exitOK, ""},
		{"command help", nil, []string{"users", "list", "-h"}, exitOK, ""},
		{"missing argument", nil, []string{"users", "get"}, exitUsage, "missing arguments"},
		{"extra argument", nil, []string{"users", "list", "x"}, exitUsage, `unexpected argument "x"`},
		{"unknown flag", nil, []string{"clients", "list", "--frob"}, exitUsage, "frob"},
		{"bad output format", nil, []string{"users", "list", "-o", "yaml"}, exitUsage, "want table or json"},
		{"no server", nil, []string{"users", "list"}, exitConfig, "no server"},
		{"bad server URL", []string{"PORTCULLIS_SERVER=ftp://x"}, []string{"users", "list"}, exitConfig, "want an http(s) URL"},
		{"not logged in", []string{"PORTCULLIS_SERVER=http://127.0.0.1:1"}, []string{"users", "list"}, exitAuth, "not logged in"},
		{"unknown key in credentials", []string{"PORTCULLIS_CREDENTIALS=" + badCreds}, []string{"users", "list"}, exitConfig, "extra"},
		{"missing token file", []string{"PORTCULLIS_SERVER=http://127.0.0.1:1"}, []string{"users", "list", "--token-file", "/nonexistent"}, exitConfig, "token file"},
		{"unreachable server", []string{"PORTCULLIS_SERVER=http://127.0.0.1:1", "PORTCULLIS_TOKEN=t"}, []string{"users", "list"}, exitError, "contact server"},
		{"both password sources", []string{"PORTCULLIS_SERVER=http://127.0.0.1:1"}, []string{"login", "--username", "a", "--password-file", "f", "--password-stdin"}, exitUsage, "exclude each other"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			env := append([]string{"HOME=" + home}, tc.env...)
			code := run(context.Background(), tc.args, &stdout, &stderr, env)
			if code != tc.want || !strings.Contains(stderr.String(), tc.msg) {
				t.Fatalf("exit %d (want %d), stderr:\n%s", code, tc.want, stderr.String())
			}
		})
	}
}

func TestExitCodeOf(t *testing.T) {
	cases := []struct {
		err  error
		want int
	}{
		{nil, exitOK},
		{usageError{"x"}, exitUsage},
		{configError{fmt.Errorf("x")}, exitConfig},
		{authError{"x"}, exitAuth},
		{deniedError{}, exitDenied},
		{fmt.Errorf("wrapped: %w", &apiError{Status: 401}), exitAuth},
		{&apiError{Status: 403}, exitAuth},
		{&apiError{Status: 404}, exitNotFound},
		{&apiError{Status: 409}, exitConflict},
		{&apiError{Status: 400}, exitError},
		{&apiError{Status: 503}, exitError},
		{fmt.Errorf("contact server: refused"), exitError},
	}
	for _, tc := range cases {
		if got := exitCodeOf(tc.err); got != tc.want {
			t.Errorf("exitCodeOf(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

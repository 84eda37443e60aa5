package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Exit codes of the admin commands, beyond exitOK, exitError, exitUsage
// and exitConfig. `routes test` keeps its own meanings for 1 and 4.
const (
	exitAuth     = 4 // not logged in, bad credentials, or forbidden (HTTP 401/403)
	exitNotFound = 5 // HTTP 404
	exitConflict = 6 // HTTP 409: already exists
	exitDenied   = 7 // verify: the token does not grant the permission
)

// usageError is a command line mistake (exit 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

// authError is a missing or refused credential found before or after
// talking to the server (exit 4).
type authError struct{ msg string }

func (e authError) Error() string { return e.msg }

// deniedError is verify's negative answer (exit 7); the outcome is
// already printed.
type deniedError struct{}

func (deniedError) Error() string { return "denied" }

// exitCodeOf maps an admin command's error to the documented exit code.
func exitCodeOf(err error) int {
	var ue usageError
	var ce configError
	var ae authError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &ce):
		return exitConfig
	case errors.As(err, &ae):
		return exitAuth
	case errors.Is(err, deniedError{}):
		return exitDenied
	}
	switch statusOf(err) {
	case http.StatusUnauthorized, http.StatusForbidden:
		return exitAuth
	case http.StatusNotFound:
		return exitNotFound
	case http.StatusConflict:
		return exitConflict
	}
	return exitError
}

// command is one admin command: its synopsis (after "portcullis"), a one
// line summary for help, and what it does with its arguments.
type command struct {
	name     string
	synopsis string
	summary  string
	run      func(ctx context.Context, c *cli, args []string) error
}

// adminCommands lists the commands in help order.
var adminCommands = []command{
	{"login", "login [--server URL] [--username U] [--password-file F | --password-stdin] [--scope S]...", "sign in with a password and save the token", cmdLogin},
	{"logout", "logout [--server URL]", "revoke the saved token and forget it", cmdLogout},
	{"users create", "users create [--username U] [--email E] [--password-file F | --password-stdin] [--technical] [--disabled]", "create a user", cmdUsersCreate},
	{"users list", "users list", "list users", cmdUsersList},
	{"users get", "users get USER|me", "show a user (USER: id, username or email)", cmdUsersGet},
	{"users update", "users update USER [--username U] [--email E] [--disabled | --disabled=false]", "change a user", cmdUsersUpdate},
	{"users delete", "users delete USER", "delete a user", cmdUsersDelete},
	{"users passwd", "users passwd USER [--password-file F | --password-stdin]", "set a user's password", cmdUsersPasswd},
	{"grants add", "grants add SUBJECT PERMISSION...", "grant permissions (or roles) to a subject such as users/ID", cmdGrantsAdd},
	{"grants remove", "grants remove SUBJECT PERMISSION... [--sub-permissions]", "remove grants from a subject", cmdGrantsRemove},
	{"grants list", "grants list SUBJECT [--direct]", "list a subject's grants (with its roles' grants unless --direct)", cmdGrantsList},
	{"resources list", "resources list PERMISSION [--prefix P]", "list the subjects holding a permission or role", cmdResourcesList},
	{"tokens create", "tokens create [--scope S]... [--type api-token|session-token] [--description D] [--purpose P]", "create a token for yourself and print it once", cmdTokensCreate},
	{"tokens list", "tokens list [--subject S]", "list API tokens (yours by default)", cmdTokensList},
	{"tokens revoke", "tokens revoke ID...", "revoke tokens by id", cmdTokensRevoke},
	{"clients create", "clients create --name N [--id ID] [--redirect-uri U]... [--grant-type G]... [--scope S]... [--public] [--first-party] [--subject S]", "register an OAuth2 client (its secret is printed once)", cmdClientsCreate},
	{"clients list", "clients list", "list OAuth2 clients", cmdClientsList},
	{"clients get", "clients get ID", "show an OAuth2 client", cmdClientsGet},
	{"clients delete", "clients delete ID...", "delete OAuth2 clients", cmdClientsDelete},
	{"keys rotate", "keys rotate", "make a new session signing key the one every replica signs with", cmdKeysRotate},
	{"verify", "verify PERMISSION [--explain] [--subject-token-file F | --subject-token-stdin] [--fresh]", "does a token (yours by default) grant PERMISSION? exit 0 yes, 7 no", cmdVerify},
}

// isAdminCommand reports whether name is the first word of an admin command.
func isAdminCommand(name string) bool {
	return slices.ContainsFunc(adminCommands, func(c command) bool { return strings.SplitN(c.name, " ", 2)[0] == name })
}

const adminUsageFooter = `
Common flags of these commands:
  --server URL       the server (env PORTCULLIS_SERVER; default: the last login)
  --token-file F     read the bearer token from F (env PORTCULLIS_TOKEN_FILE,
                     or the token itself in PORTCULLIS_TOKEN; default: the
                     token saved by login in the credentials file)
  -o table|json      output format (default table)
The credentials file is $PORTCULLIS_CREDENTIALS, else
$XDG_CONFIG_HOME/portcullis/credentials.yaml, else
~/.config/portcullis/credentials.yaml (mode 0600).

Exit codes: 0 ok, 1 error, 2 usage, 3 configuration, 4 not logged in or
forbidden (HTTP 401/403, wrong password), 5 not found (404), 6 conflict
(409), 7 verify: denied.
`

// adminUsage lists the admin commands whose name starts with prefix.
func adminUsage(prefix string) string {
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	for _, c := range adminCommands {
		if strings.HasPrefix(c.name, prefix) {
			fmt.Fprintf(tw, "  portcullis %s\t%s\n", c.name, c.summary)
		}
	}
	tw.Flush()
	return b.String()
}

// runAdmin runs an admin command and returns its exit code.
func runAdmin(ctx context.Context, args []string, stdout, stderr io.Writer, environ []string) int {
	var cmd *command
	for i := range adminCommands {
		words := strings.Fields(adminCommands[i].name)
		if len(args) >= len(words) && slices.Equal(args[:len(words)], words) {
			cmd = &adminCommands[i]
			args = args[len(words):]
			break
		}
	}
	if cmd == nil {
		out, code := stderr, exitUsage
		if len(args) == 2 && (args[1] == "-h" || args[1] == "--help" || args[1] == "help") {
			out, code = stdout, exitOK
		} else if len(args) > 1 {
			fmt.Fprintf(stderr, "portcullis: unknown command %q\n", strings.Join(args[:2], " "))
		}
		fmt.Fprintf(out, "Usage:\n%s%s", adminUsage(args[0]+" "), adminUsageFooter)
		return code
	}
	c := &cli{cmd: cmd, stdout: stdout, stderr: stderr, env: envMap(environ), stdin: os.Stdin}
	err := cmd.run(ctx, c, args)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil && !errors.Is(err, deniedError{}) {
		fmt.Fprintf(stderr, "portcullis %s: %v\n", cmd.name, err)
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "Usage: portcullis %s\n", cmd.synopsis)
		}
	}
	return exitCodeOf(err)
}

func envMap(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok {
			m[k] = v
		}
	}
	return m
}

// cli is the state of one admin command run.
type cli struct {
	cmd            *command
	stdout, stderr io.Writer
	env            map[string]string
	stdin          *os.File

	server, tokenFile, output string
}

// flags returns the command's flag set with the common flags.
func (c *cli) flags() *flag.FlagSet {
	fs := flag.NewFlagSet("portcullis "+c.cmd.name, flag.ContinueOnError)
	fs.SetOutput(c.stderr)
	fs.StringVar(&c.server, "server", "", "server URL (env PORTCULLIS_SERVER; default: the last login)")
	fs.StringVar(&c.tokenFile, "token-file", "", "read the bearer token from this file (env PORTCULLIS_TOKEN_FILE)")
	fs.StringVar(&c.output, "o", "table", "output format: table or json")
	fs.Usage = func() {
		fmt.Fprintf(c.stderr, "Usage: portcullis %s\n\n%s.\n\nFlags:\n", c.cmd.synopsis, c.cmd.summary)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags anywhere among the arguments ("users get ID -o json"
// as well as "users get -o json ID") and checks the number of positional
// arguments (max < 0: no limit).
func (c *cli) parse(fs *flag.FlagSet, args []string, min, max int) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		rest := fs.Args()
		consumed := len(args) - len(rest)
		if consumed > 0 && args[consumed-1] == "--" {
			pos = append(pos, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
	if c.output != "table" && c.output != "json" {
		return nil, usageError{fmt.Sprintf("-o %q: want table or json", c.output)}
	}
	switch {
	case len(pos) < min:
		return nil, usageError{"missing arguments"}
	case max >= 0 && len(pos) > max:
		return nil, usageError{fmt.Sprintf("unexpected argument %q", pos[max])}
	}
	return pos, nil
}

// target returns the server commands talk to and the credentials file.
func (c *cli) target() (server string, creds credentials, path string, err error) {
	path, err = credentialsPath(c.env)
	if err != nil {
		return "", creds, "", err
	}
	creds, err = loadCredentials(path)
	if err != nil {
		return "", creds, "", err
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		fmt.Fprintf(c.stderr, "portcullis: warning: %s holds tokens but others may read it (mode %v); run chmod 600 on it\n", path, fi.Mode().Perm())
	}
	server = c.server
	if server == "" {
		server = c.env["PORTCULLIS_SERVER"]
	}
	if server == "" {
		server = creds.CurrentServer
	}
	if server == "" {
		return "", creds, "", configError{errors.New("no server: pass --server URL, set PORTCULLIS_SERVER or run 'portcullis login --server URL'")}
	}
	u, err := parseServerURL(server)
	if err != nil {
		return "", creds, "", err
	}
	return u.String(), creds, path, nil
}

// connect returns a client for the target server with the caller's token:
// --token-file, PORTCULLIS_TOKEN_FILE, PORTCULLIS_TOKEN, then the login
// saved for that server.
func (c *cli) connect() (*apiClient, error) {
	server, creds, _, err := c.target()
	if err != nil {
		return nil, err
	}
	token := ""
	switch file := cmpOr(c.tokenFile, c.env["PORTCULLIS_TOKEN_FILE"]); {
	case file != "":
		if token, err = readSecretFile(file); err != nil {
			return nil, configError{fmt.Errorf("token file: %w", err)}
		}
	case c.env["PORTCULLIS_TOKEN"] != "":
		token = strings.TrimSpace(c.env["PORTCULLIS_TOKEN"])
	default:
		l, ok := creds.login(server)
		if !ok {
			return nil, authError{fmt.Sprintf("not logged in to %s: run 'portcullis login --server %s' or pass --token-file", server, server)}
		}
		if l.ExpiresAt != nil && !time.Now().Before(*l.ExpiresAt) {
			return nil, authError{fmt.Sprintf("the login to %s expired at %s: run 'portcullis login' again", server, l.ExpiresAt.Local().Format(time.RFC3339))}
		}
		token = l.Token
	}
	return newAPIClient(server, token)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// readSecretFile reads a token or password from a file, without the
// trailing newline an editor or `echo` adds.
func readSecretFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := trimNewline(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return s, nil
}

func trimNewline(s string) string {
	return strings.TrimSuffix(strings.TrimSuffix(s, "\n"), "\r")
}

// password reads a password from --password-file, --password-stdin or,
// with prompt, from a terminal without echo (twice with confirm). Without
// prompt and without a source it returns "": the password is optional.
func (c *cli) password(file string, fromStdin, prompt, confirm bool) (string, error) {
	switch {
	case file != "" && fromStdin:
		return "", usageError{"--password-file and --password-stdin exclude each other"}
	case file != "":
		pw, err := readSecretFile(file)
		if err != nil {
			return "", configError{fmt.Errorf("password file: %w", err)}
		}
		return pw, nil
	case fromStdin:
		b, err := io.ReadAll(io.LimitReader(c.stdin, 64<<10))
		if err != nil {
			return "", fmt.Errorf("read password from stdin: %w", err)
		}
		pw := trimNewline(string(b))
		if pw == "" {
			return "", usageError{"--password-stdin: stdin is empty"}
		}
		return pw, nil
	case !prompt:
		return "", nil
	case !isTerminal(c.stdin):
		return "", usageError{"no password: stdin is not a terminal; use --password-file F or --password-stdin"}
	}
	pw, err := readPasswordNoEcho(c.stdin, c.stderr, "Password: ")
	if err != nil {
		return "", err
	}
	if confirm {
		again, err := readPasswordNoEcho(c.stdin, c.stderr, "Repeat password: ")
		if err != nil {
			return "", err
		}
		if again != pw {
			return "", usageError{"the passwords differ"}
		}
	}
	if pw == "" {
		return "", usageError{"empty password"}
	}
	return pw, nil
}

// emit prints raw (the server's JSON) indented with -o json, else the
// table that fill writes.
func (c *cli) emit(raw json.RawMessage, fill func(tw *tabwriter.Writer)) error {
	if c.output == "json" {
		var b bytes.Buffer
		if err := json.Indent(&b, raw, "", "  "); err != nil {
			return fmt.Errorf("format answer: %w", err)
		}
		b.WriteByte('\n')
		_, err := c.stdout.Write(b.Bytes())
		return err
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fill(tw)
	return tw.Flush()
}

// emitValue is emit for a value the CLI composed itself.
func (c *cli) emitValue(v any, fill func(tw *tabwriter.Writer)) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	return c.emit(raw, fill)
}

// fetch calls the API, keeps the raw answer for -o json and decodes it
// into out for the table.
func fetch(ctx context.Context, api *apiClient, req request, out any) (json.RawMessage, error) {
	var raw json.RawMessage
	if err := api.do(ctx, req, &raw); err != nil {
		return nil, err
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return nil, fmt.Errorf("decode answer of %s %s: %w", req.Method, req.Path, err)
		}
	}
	return raw, nil
}

// listFlag is a repeatable string flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	*l = append(*l, s)
	return nil
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func sorted(in []string) []string {
	out := slices.Clone(in)
	slices.Sort(out)
	return out
}

// fullUsage is the top-level help with the admin commands filled in.
func fullUsage() string {
	return strings.Replace(usage, "{{admin}}", adminUsage("")+adminUsageFooter, 1)
}

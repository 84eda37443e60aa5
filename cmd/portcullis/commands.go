package main

import (
	"context"
	"flag"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/portcullis/portcullis/authz"
)

// Every command here is one call (or a few) of the contaxy-compatible REST
// API; docs/cli.md lists the endpoint behind each.

func userTable(users []authz.User) func(*tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "ID\tUSERNAME\tEMAIL\tDISABLED\tTECHNICAL\tPASSWORD\tCREATED")
		for _, u := range users {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%t\t%t\t%t\t%s\n", u.ID, dash(u.Username), dash(u.Email), u.Disabled, u.TechnicalUser, u.HasPassword, formatTime(u.CreatedAt))
		}
	}
}

func cmdUsersCreate(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	var in authz.UserInput
	fs.StringVar(&in.Username, "username", "", "user name")
	fs.StringVar(&in.Email, "email", "", "email address")
	fs.BoolVar(&in.Disabled, "disabled", false, "create the user disabled")
	technical := fs.Bool("technical", false, "a technical (service) user")
	pwFile := fs.String("password-file", "", "read the password from this file")
	pwStdin := fs.Bool("password-stdin", false, "read the password from stdin")
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	if in.Username == "" && in.Email == "" {
		return usageError{"--username or --email is required"}
	}
	var err error
	if in.Password, err = c.password(*pwFile, *pwStdin, false, false); err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	q := url.Values{}
	if *technical {
		q.Set("technical_user", "true")
	}
	var u authz.User
	raw, err := fetch(ctx, api, request{Method: http.MethodPost, Path: "/users", Query: q, Body: in}, &u)
	if err != nil {
		return err
	}
	return c.emit(raw, userTable([]authz.User{u}))
}

func cmdUsersList(ctx context.Context, c *cli, args []string) error {
	if _, err := c.parse(c.flags(), args, 0, 0); err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	var users []authz.User
	raw, err := fetch(ctx, api, request{Method: http.MethodGet, Path: "/users"}, &users)
	if err != nil {
		return err
	}
	return c.emit(raw, userTable(users))
}

// resolveUser turns a user id, username or email into the user's id by
// looking through the user list (which every signed-in caller may read);
// an argument that matches no one is taken as an id, for the server to
// judge.
func resolveUser(ctx context.Context, api *apiClient, arg string) (string, error) {
	var users []authz.User
	if err := api.do(ctx, request{Method: http.MethodGet, Path: "/users"}, &users); err != nil {
		return "", err
	}
	for _, u := range users {
		if u.ID == arg {
			return u.ID, nil
		}
	}
	for _, u := range users {
		if strings.EqualFold(u.Username, arg) || (u.Email != "" && strings.EqualFold(u.Email, arg)) {
			return u.ID, nil
		}
	}
	return arg, nil
}

// userCommand connects and resolves the USER argument to a path-escaped id.
func userCommand(ctx context.Context, c *cli, user string) (*apiClient, string, error) {
	api, err := c.connect()
	if err != nil {
		return nil, "", err
	}
	id, err := resolveUser(ctx, api, user)
	if err != nil {
		return nil, "", err
	}
	return api, url.PathEscape(id), nil
}

func cmdUsersGet(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	var path string
	var api *apiClient
	if pos[0] == "me" {
		if api, err = c.connect(); err != nil {
			return err
		}
		path = "/users/me"
	} else {
		var id string
		if api, id, err = userCommand(ctx, c, pos[0]); err != nil {
			return err
		}
		path = "/users/" + id
	}
	var u authz.User
	raw, err := fetch(ctx, api, request{Method: http.MethodGet, Path: path}, &u)
	if err != nil {
		return err
	}
	return c.emit(raw, userTable([]authz.User{u}))
}

func cmdUsersUpdate(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	fs.String("username", "", "new user name")
	fs.String("email", "", "new email address")
	fs.Bool("disabled", false, "--disabled to disable the user (ends its sessions), --disabled=false to enable it")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	// A JSON merge patch of exactly the flags given.
	patch := map[string]any{}
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "username", "email":
			patch[f.Name] = f.Value.String()
		case "disabled":
			patch["disabled"] = f.Value.String() == "true"
		}
	})
	if len(patch) == 0 {
		return usageError{"nothing to change: give --username, --email or --disabled"}
	}
	api, id, err := userCommand(ctx, c, pos[0])
	if err != nil {
		return err
	}
	var u authz.User
	raw, err := fetch(ctx, api, request{Method: http.MethodPatch, Path: "/users/" + id, Body: patch}, &u)
	if err != nil {
		return err
	}
	return c.emit(raw, userTable([]authz.User{u}))
}

func cmdUsersDelete(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	api, id, err := userCommand(ctx, c, pos[0])
	if err != nil {
		return err
	}
	if err := api.do(ctx, request{Method: http.MethodDelete, Path: "/users/" + id}, nil); err != nil {
		return err
	}
	return c.done("deleted user " + pos[0])
}

func cmdUsersPasswd(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	pwFile := fs.String("password-file", "", "read the new password from this file")
	pwStdin := fs.Bool("password-stdin", false, "read the new password from stdin")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	pw, err := c.password(*pwFile, *pwStdin, true, true)
	if err != nil {
		return err
	}
	api, id, err := userCommand(ctx, c, pos[0])
	if err != nil {
		return err
	}
	if err := api.do(ctx, request{Method: http.MethodPut, Path: "/users/" + id + ":change-password", Body: pw}, nil); err != nil {
		return err
	}
	return c.done("changed the password of " + pos[0])
}

// done reports a change that has no object to show: a line for people,
// {"ok":true,"message":...} for scripts.
func (c *cli) done(msg string) error {
	return c.emitValue(map[string]any{"ok": true, "message": msg}, func(tw *tabwriter.Writer) { fmt.Fprintln(tw, msg) })
}

func permissionQuery(subject, permission string) url.Values {
	return url.Values{"resource_name": {subject}, "permission": {permission}}
}

func cmdGrantsAdd(ctx context.Context, c *cli, args []string) error {
	pos, err := c.parse(c.flags(), args, 2, -1)
	if err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	for _, p := range pos[1:] {
		if err := api.do(ctx, request{Method: http.MethodPost, Path: "/auth/permissions", Query: permissionQuery(pos[0], p)}, nil); err != nil {
			return fmt.Errorf("grant %s to %s: %w", p, pos[0], err)
		}
	}
	return c.done(fmt.Sprintf("granted %s to %s", strings.Join(pos[1:], ", "), pos[0]))
}

func cmdGrantsRemove(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	sub := fs.Bool("sub-permissions", false, "also remove the subject's grants on resources below each permission's resource")
	pos, err := c.parse(fs, args, 2, -1)
	if err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	for _, p := range pos[1:] {
		q := permissionQuery(pos[0], p)
		if *sub {
			q.Set("remove_sub_permissions", "true")
		}
		if err := api.do(ctx, request{Method: http.MethodDelete, Path: "/auth/permissions", Query: q}, nil); err != nil {
			return fmt.Errorf("remove %s from %s: %w", p, pos[0], err)
		}
	}
	return c.done(fmt.Sprintf("removed %s from %s", strings.Join(pos[1:], ", "), pos[0]))
}

func stringTable(header string, items []string) func(*tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, header)
		for _, s := range sorted(items) {
			fmt.Fprintln(tw, s)
		}
	}
}

func cmdGrantsList(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	direct := fs.Bool("direct", false, "only the subject's own grants, not those of its roles")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	q := url.Values{"resource_name": {pos[0]}, "resolve_roles": {strconv.FormatBool(!*direct)}}
	var perms []string
	raw, err := fetch(ctx, api, request{Method: http.MethodGet, Path: "/auth/permissions", Query: q}, &perms)
	if err != nil {
		return err
	}
	return c.emit(raw, stringTable("PERMISSION", perms))
}

func cmdResourcesList(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	prefix := fs.String("prefix", "", "only resources whose name starts with this")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	q := url.Values{"permission": {pos[0]}}
	if *prefix != "" {
		q.Set("resource_name_prefix", *prefix)
	}
	var res []string
	raw, err := fetch(ctx, api, request{Method: http.MethodGet, Path: "/auth/resources", Query: q}, &res)
	if err != nil {
		return err
	}
	return c.emit(raw, stringTable("RESOURCE", res))
}

func cmdTokensCreate(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	var scopes listFlag
	fs.Var(&scopes, "scope", "permission the token may use (repeatable; default: the server's default)")
	typ := fs.String("type", authz.TokenTypeAPI, "token type: api-token (revocable, listed) or session-token")
	desc := fs.String("description", "", "what the token is for")
	purpose := fs.String("purpose", "", "token purpose label")
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	q := url.Values{"token_type": {*typ}}
	for _, s := range scopes {
		q.Add("scope", s)
	}
	if *desc != "" {
		q.Set("description", *desc)
	}
	if *purpose != "" {
		q.Set("token_purpose", *purpose)
	}
	// Printing the new token is this command's purpose; it is shown once.
	var tok string
	raw, err := fetch(ctx, api, request{Method: http.MethodPost, Path: "/auth/tokens", Query: q}, &tok)
	if err != nil {
		return err
	}
	return c.emit(raw, func(tw *tabwriter.Writer) { fmt.Fprintln(tw, tok) })
}

func cmdTokensList(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	subject := fs.String("subject", "", "whose tokens (default: yours), e.g. users/ID")
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	q := url.Values{}
	if *subject != "" {
		q.Set("token_subject", *subject)
	}
	var toks []authz.TokenInfo
	raw, err := fetch(ctx, api, request{Method: http.MethodGet, Path: "/auth/tokens", Query: q}, &toks)
	if err != nil {
		return err
	}
	return c.emit(raw, func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "ID\tTYPE\tSUBJECT\tSCOPES\tPURPOSE\tDESCRIPTION\tCREATED\tEXPIRES")
		for _, t := range toks {
			exp := "-"
			if t.ExpiresAt != nil {
				exp = formatTime(*t.ExpiresAt)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Type, t.Subject, dash(strings.Join(t.Scopes, ",")),
				dash(t.Purpose), dash(t.Description), formatTime(t.CreatedAt), exp)
		}
	})
}

func cmdTokensRevoke(ctx context.Context, c *cli, args []string) error {
	return deleteEach(ctx, c, args, "/auth/tokens/", "revoke token", "revoked")
}

func clientTable(clients []authz.Client) func(*tabwriter.Writer) {
	return func(tw *tabwriter.Writer) {
		fmt.Fprintln(tw, "CLIENT_ID\tNAME\tPUBLIC\tFIRST_PARTY\tGRANT_TYPES\tSCOPES\tREDIRECT_URIS\tSUBJECT")
		for _, cl := range clients {
			fmt.Fprintf(tw, "%s\t%s\t%t\t%t\t%s\t%s\t%s\t%s\n", cl.ID, dash(cl.Name), cl.Public, cl.FirstParty,
				dash(strings.Join(cl.GrantTypes, ",")), dash(strings.Join(cl.Scopes, ",")), dash(strings.Join(cl.RedirectURIs, ",")), cl.Subject)
		}
	}
}

func cmdClientsCreate(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	var spec authz.ClientSpec
	var redirects, grants, scopes listFlag
	fs.StringVar(&spec.ID, "id", "", "client id (default: generated)")
	fs.StringVar(&spec.Name, "name", "", "display name shown on the consent page")
	fs.Var(&redirects, "redirect-uri", "allowed redirect URI (repeatable)")
	fs.Var(&grants, "grant-type", "allowed grant type (repeatable; default: authorization_code, refresh_token)")
	fs.Var(&scopes, "scope", "scope the client may request (repeatable)")
	fs.BoolVar(&spec.Public, "public", false, "a public client (native or browser app): no secret, PKCE required")
	fs.BoolVar(&spec.FirstParty, "first-party", false, "skip the consent page")
	fs.StringVar(&spec.Subject, "subject", "", "subject the client's own tokens act as (default: clients/ID)")
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	spec.RedirectURIs, spec.GrantTypes, spec.Scopes = redirects, grants, scopes
	api, err := c.connect()
	if err != nil {
		return err
	}
	var out struct {
		authz.Client
		Secret string `json:"client_secret"`
	}
	raw, err := fetch(ctx, api, request{Method: http.MethodPost, Path: "/auth/clients", Body: spec}, &out)
	if err != nil {
		return err
	}
	return c.emit(raw, func(tw *tabwriter.Writer) {
		clientTable([]authz.Client{out.Client})(tw)
		if out.Secret != "" {
			// The client secret is the registration's product, shown once,
			// like the token of `tokens create`.
			fmt.Fprintf(tw, "\nclient_secret: %s\n(shown once; store it now)\n", out.Secret)
		}
	})
}

func cmdClientsList(ctx context.Context, c *cli, args []string) error {
	if _, err := c.parse(c.flags(), args, 0, 0); err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	var cls []authz.Client
	raw, err := fetch(ctx, api, request{Method: http.MethodGet, Path: "/auth/clients"}, &cls)
	if err != nil {
		return err
	}
	return c.emit(raw, clientTable(cls))
}

func cmdClientsGet(ctx context.Context, c *cli, args []string) error {
	pos, err := c.parse(c.flags(), args, 1, 1)
	if err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	var cl authz.Client
	raw, err := fetch(ctx, api, request{Method: http.MethodGet, Path: "/auth/clients/" + url.PathEscape(pos[0])}, &cl)
	if err != nil {
		return err
	}
	return c.emit(raw, clientTable([]authz.Client{cl}))
}

func cmdClientsDelete(ctx context.Context, c *cli, args []string) error {
	return deleteEach(ctx, c, args, "/auth/clients/", "delete client", "deleted")
}

// deleteEach sends DELETE prefix+ID for each ID argument, stopping at the
// first failure.
func deleteEach(ctx context.Context, c *cli, args []string, prefix, what, done string) error {
	pos, err := c.parse(c.flags(), args, 1, -1)
	if err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	for _, id := range pos {
		if err := api.do(ctx, request{Method: http.MethodDelete, Path: prefix + url.PathEscape(id)}, nil); err != nil {
			return fmt.Errorf("%s %s: %w", what, id, err)
		}
	}
	return c.done(done + " " + strings.Join(pos, ", "))
}

func cmdKeysRotate(ctx context.Context, c *cli, args []string) error {
	if _, err := c.parse(c.flags(), args, 0, 0); err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	var out struct {
		Kid string `json:"kid"`
	}
	raw, err := fetch(ctx, api, request{Method: http.MethodPost, Path: "/auth/keys/rotate"}, &out)
	if err != nil {
		return err
	}
	return c.emit(raw, func(tw *tabwriter.Writer) {
		fmt.Fprintf(tw, "new signing key: %s\n(sessions signed with older keys stay valid until they expire)\n", out.Kid)
	})
}

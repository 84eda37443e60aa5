package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// tokenAnswer is the part of the token endpoint's answer login keeps.
type tokenAnswer struct {
	AccessToken  string `json:"access_token"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token"`
	Scope        string `json:"scope"`
}

// cmdLogin runs the OAuth2 password grant and saves the access token.
func cmdLogin(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	username := fs.String("username", "", "user name or email (default: prompt on a terminal)")
	pwFile := fs.String("password-file", "", "read the password from this file")
	pwStdin := fs.Bool("password-stdin", false, "read the password from stdin")
	var scopes listFlag
	fs.Var(&scopes, "scope", "scope to request (repeatable; default: the server's default for a password login)")
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	server, creds, path, err := c.target()
	if err != nil {
		return err
	}
	if *username == "" {
		if *pwStdin || !isTerminal(c.stdin) {
			return usageError{"--username is required when stdin is not a terminal"}
		}
		fmt.Fprint(c.stderr, "Username: ")
		line, err := bufio.NewReader(c.stdin).ReadString('\n')
		if err != nil && line == "" {
			return fmt.Errorf("read username: %w", err)
		}
		if *username = strings.TrimSpace(line); *username == "" {
			return usageError{"empty username"}
		}
	}
	pw, err := c.password(*pwFile, *pwStdin, true, false)
	if err != nil {
		return err
	}
	api, err := newAPIClient(server, "")
	if err != nil {
		return err
	}
	form := url.Values{"grant_type": {"password"}, "username": {*username}, "password": {pw}}
	if len(scopes) > 0 {
		form.Set("scope", strings.Join(scopes, " "))
	}
	var tok tokenAnswer
	if err := api.do(ctx, request{Method: http.MethodPost, Path: "/auth/oauth/token", Form: form}, &tok); err != nil {
		// RFC 6749 answers a wrong password with 400 invalid_grant.
		var ae *apiError
		if errors.As(err, &ae) && (ae.Status == http.StatusBadRequest && ae.Message == "invalid_grant" || ae.Status == http.StatusUnauthorized) {
			return authError{"login failed: " + ae.Error()}
		}
		return fmt.Errorf("login: %w", err)
	}
	if tok.AccessToken == "" {
		return fmt.Errorf("login: the server answered without an access token")
	}
	l := savedLogin{Server: server, Username: *username, Token: tok.AccessToken}
	if tok.ExpiresIn > 0 {
		exp := time.Now().Add(time.Duration(tok.ExpiresIn) * time.Second).UTC().Truncate(time.Second)
		l.ExpiresAt = &exp
	}
	creds.put(l)
	if err := creds.save(path); err != nil {
		return err
	}
	if tok.RefreshToken != "" {
		// The CLI does not keep the refresh token; revoke it so that no
		// unseen long-lived credential is left behind.
		api.token = tok.AccessToken
		_ = api.do(ctx, request{Method: http.MethodPost, Path: "/auth/oauth/revoke", Form: url.Values{"token": {tok.RefreshToken}}}, nil)
	}
	until := ""
	if l.ExpiresAt != nil {
		until = " until " + l.ExpiresAt.Local().Format(time.RFC3339)
	}
	fmt.Fprintf(c.stdout, "Logged in to %s as %s%s (token saved in %s).\n", server, *username, until, path)
	return nil
}

// cmdLogout revokes the saved token at the server and removes it from the
// credentials file. The local copy is removed even when the server
// cannot be reached; that failure is still reported.
func cmdLogout(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	if _, err := c.parse(fs, args, 0, 0); err != nil {
		return err
	}
	server, creds, path, err := c.target()
	if err != nil {
		return err
	}
	l, ok := creds.login(server)
	if !ok {
		fmt.Fprintf(c.stdout, "Not logged in to %s.\n", server)
		return nil
	}
	creds.remove(server)
	if err := creds.save(path); err != nil {
		return err
	}
	api, err := newAPIClient(server, l.Token)
	if err != nil {
		return err
	}
	err = api.do(ctx, request{Method: http.MethodPost, Path: "/auth/oauth/revoke", Form: url.Values{"token": {l.Token}}}, nil)
	if err != nil && statusOf(err) != http.StatusUnauthorized { // 401: already expired or revoked
		return fmt.Errorf("token removed from %s, but the server did not revoke it: %w", path, err)
	}
	fmt.Fprintf(c.stdout, "Logged out of %s.\n", server)
	return nil
}

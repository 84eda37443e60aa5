package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"

	"github.com/portcullis/portcullis/authz"
)

// verifyOutcome is what `verify -o json` prints. It is the CLI's own
// shape: the server's AuthorizedAccess echoes the verified token, which
// the CLI never prints.
type verifyOutcome struct {
	Allowed    bool     `json:"allowed"`
	Permission string   `json:"permission"`
	Subject    string   `json:"subject,omitempty"`
	TokenID    string   `json:"token_id,omitempty"`
	Scopes     []string `json:"token_scopes,omitempty"`
	// Explanation (with --explain): on an allowed request the server's
	// (scope, grant, holder, via); on a denial, Missing says which part
	// failed: "scope" (the token's scopes) or "grant" (the subject's grants).
	Explanation *authz.Explanation `json:"explanation,omitempty"`
	// Reason is the server's message on a denial.
	Reason string `json:"reason,omitempty"`
}

// accessAnswer is the part of the server's AuthorizedAccess verify reads.
type accessAnswer struct {
	Subject string `json:"authorized_subject"`
	Token   struct {
		ID     string   `json:"id"`
		Scopes []string `json:"scopes"`
	} `json:"access_token"`
	Explanation *authz.Explanation `json:"explanation"`
}

// explainPermission is what the server demands of a caller asking why.
const explainPermission = "auth/permissions#admin"

func cmdVerify(ctx context.Context, c *cli, args []string) error {
	fs := c.flags()
	explain := fs.Bool("explain", false, "say why: which scope and grant (and through which roles) allowed it, or which part was missing; needs "+explainPermission)
	subjectFile := fs.String("subject-token-file", "", "verify the token in this file instead of your own")
	subjectStdin := fs.Bool("subject-token-stdin", false, "verify the token read from stdin instead of your own")
	fresh := fs.Bool("fresh", false, "bypass the server's decision cache")
	pos, err := c.parse(fs, args, 1, 1)
	if err != nil {
		return err
	}
	perm, err := authz.ParsePermission(pos[0])
	if err != nil {
		return usageError{fmt.Sprintf("permission %q: %v", pos[0], err)}
	}
	subjectToken, err := c.subjectToken(*subjectFile, *subjectStdin)
	if err != nil {
		return err
	}
	api, err := c.connect()
	if err != nil {
		return err
	}
	if subjectToken == "" {
		subjectToken = api.token
	}
	if *explain {
		// Ask first whether the caller may see explanations, so that a 403
		// below can only mean the verified token was denied.
		err := api.do(ctx, request{Method: http.MethodPost, Path: "/auth/tokens/verify", Query: url.Values{"permission": {explainPermission}}}, nil)
		if statusOf(err) == http.StatusForbidden {
			return authError{"--explain needs the " + explainPermission + " permission"}
		}
		if err != nil {
			return err
		}
	}
	q := url.Values{"permission": {perm.String()}}
	if *explain {
		q.Set("explain", "true")
	}
	if *fresh {
		q.Set("use_cache", "false")
	}
	out := verifyOutcome{Permission: perm.String()}
	var acc accessAnswer
	err = api.do(ctx, request{Method: http.MethodPost, Path: "/auth/tokens/verify", Query: q, Body: subjectToken}, &acc)
	var ae *apiError
	switch {
	case err == nil:
		out.Allowed, out.Subject, out.TokenID, out.Scopes, out.Explanation = true, acc.Subject, acc.Token.ID, acc.Token.Scopes, acc.Explanation
	case errors.As(err, &ae) && ae.Status == http.StatusForbidden:
		out.Reason = cmpOr(ae.Explanation, ae.Message)
		if *explain {
			if err := explainDenial(ctx, api, subjectToken, perm, &out); err != nil {
				return err
			}
		}
	case errors.As(err, &ae) && ae.Status == http.StatusUnauthorized:
		return authError{"the token is not valid: " + ae.Error()}
	default:
		return err
	}
	if err := c.emitValue(out, func(tw *tabwriter.Writer) { verifyTable(tw, out) }); err != nil {
		return err
	}
	if !out.Allowed {
		return deniedError{}
	}
	return nil
}

// explainDenial says which part failed. The server's 403 carries only its
// reason text, so the CLI asks for the token's scopes (a verify without a
// permission) and checks them itself: if a scope covers the permission,
// the subject's grants are what is missing.
func explainDenial(ctx context.Context, api *apiClient, token string, perm authz.Permission, out *verifyOutcome) error {
	var acc accessAnswer
	if err := api.do(ctx, request{Method: http.MethodPost, Path: "/auth/tokens/verify", Body: token}, &acc); err != nil {
		return fmt.Errorf("explain: %w", err)
	}
	out.Subject, out.TokenID, out.Scopes = acc.Subject, acc.Token.ID, acc.Token.Scopes
	ex := &authz.Explanation{Missing: "scope", Reason: out.Reason}
	for _, s := range acc.Token.Scopes {
		if sp, err := authz.ParsePermission(s); err == nil && sp.Covers(perm) {
			ex.Scope, ex.Missing = sp.String(), "grant"
			break
		}
	}
	out.Explanation = ex
	return nil
}

func verifyTable(tw *tabwriter.Writer, o verifyOutcome) {
	decision := "denied"
	if o.Allowed {
		decision = "allowed"
	}
	fmt.Fprintf(tw, "decision:\t%s\npermission:\t%s\n", decision, o.Permission)
	if o.Subject != "" {
		fmt.Fprintf(tw, "subject:\t%s\n", o.Subject)
	}
	if o.TokenID != "" {
		fmt.Fprintf(tw, "token:\t%s (scopes: %s)\n", o.TokenID, dash(strings.Join(o.Scopes, ", ")))
	}
	if e := o.Explanation; e != nil {
		if e.Scope != "" {
			fmt.Fprintf(tw, "scope:\t%s\n", e.Scope)
		}
		if e.Grant != "" {
			via := ""
			if len(e.Via) > 0 {
				via = " via " + strings.Join(e.Via, " → ")
			}
			fmt.Fprintf(tw, "grant:\t%s held by %s%s\n", e.Grant, e.Holder, via)
		}
		switch e.Missing {
		case "scope":
			fmt.Fprintf(tw, "missing:\tscope (no scope of the token covers the permission)\n")
		case "grant":
			fmt.Fprintf(tw, "missing:\tgrant (the token's scope allows it, but the subject holds no grant covering it)\n")
		}
	}
	if o.Reason != "" {
		fmt.Fprintf(tw, "reason:\t%s\n", o.Reason)
	} else if o.Explanation != nil && o.Explanation.Reason != "" {
		fmt.Fprintf(tw, "reason:\t%s\n", o.Explanation.Reason)
	}
}

// subjectToken reads the token to verify when it is not the caller's own.
func (c *cli) subjectToken(file string, fromStdin bool) (string, error) {
	switch {
	case file != "" && fromStdin:
		return "", usageError{"--subject-token-file and --subject-token-stdin exclude each other"}
	case file != "":
		t, err := readSecretFile(file)
		if err != nil {
			return "", configError{fmt.Errorf("subject token file: %w", err)}
		}
		return strings.TrimSpace(t), nil
	case fromStdin:
		b, err := io.ReadAll(io.LimitReader(c.stdin, 64<<10))
		if err != nil {
			return "", fmt.Errorf("read subject token: %w", err)
		}
		t := strings.TrimSpace(string(b))
		if t == "" {
			return "", usageError{"--subject-token-stdin: no token on stdin"}
		}
		return t, nil
	}
	return "", nil
}

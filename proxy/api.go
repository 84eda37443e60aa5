package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// decodeStrict decodes one JSON value, refusing unknown fields and trailing data.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errTrailing
	}
	return nil
}

func readBody(c echo.Context) ([]byte, error) {
	return io.ReadAll(c.Request().Body)
}

// apiToken is contaxy's ApiToken. "token" carries the token id: contaxy's
// clients require the field, and Portcullis never returns a stored secret.
type apiToken struct {
	Token string `json:"token"`
	authz.TokenInfo
}

func toAPITokens(in []authz.TokenInfo) []apiToken {
	out := make([]apiToken, len(in))
	for i, t := range in {
		out[i] = apiToken{Token: t.ID, TokenInfo: t}
	}
	return out
}

func (s *Server) listTokens(c echo.Context) error {
	acc, err := s.caller(c)
	if err != nil {
		return err
	}
	subject, err := queryOne(c, "token_subject")
	if err != nil {
		return err
	}
	if subject == "" {
		subject = acc.Subject
	}
	if err := s.svc.Check(c.Request().Context(), acc, strings.Trim(subject, "/:")+"#admin"); err != nil {
		return err
	}
	toks, err := s.svc.ListAPITokens(c.Request().Context(), subject)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toAPITokens(toks))
}

func (s *Server) createToken(c echo.Context) error {
	acc, err := s.caller(c)
	if err != nil {
		return err
	}
	q := c.QueryParams()
	// contaxy's API takes "scope" (repeated); its Python client sends
	// "scopes", which contaxy ignores, handing out a token with all of the
	// caller's scopes. Both are read here, so that client gets the
	// narrower token it asked for.
	scopes := append(append([]string(nil), q["scope"]...), q["scopes"]...)
	spec := authz.TokenSpec{Scopes: scopes, Type: authz.TokenTypeSession}
	for name, dst := range map[string]*string{"token_type": &spec.Type, "description": &spec.Description, "token_purpose": &spec.Purpose} {
		v, err := queryOne(c, name)
		if err != nil {
			return err
		}
		if v != "" {
			*dst = v
		}
	}
	tok, info, rev, err := s.svc.CreateToken(c.Request().Context(), acc, spec)
	if err != nil {
		return err
	}
	s.auditChange(c, acc.Subject, AuditTokenCreate, rev, tokenAttrs(info)...)
	setRevision(c, rev)
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, tok)
}

func (s *Server) deleteToken(c echo.Context) error {
	acc, err := s.caller(c)
	if err != nil {
		return err
	}
	rev, err := s.svc.RevokeTokenByID(c.Request().Context(), &acc, c.Param("id"))
	if err != nil {
		return err
	}
	s.auditChange(c, acc.Subject, AuditTokenRevoke, rev, slog.String("token_id", c.Param("id")))
	setRevision(c, rev)
	return c.NoContent(http.StatusNoContent)
}

// accessToken is contaxy's AccessToken inside AuthorizedAccess.
type accessToken struct {
	Token string `json:"token"`
	authz.TokenInfo
}

type authorizedAccess struct {
	Subject     string             `json:"authorized_subject"`
	Resource    string             `json:"resource_name,omitempty"`
	Level       string             `json:"access_level,omitempty"`
	Token       accessToken        `json:"access_token"`
	Explanation *authz.Explanation `json:"explanation,omitempty"`
}

// verify is POST /auth/tokens/verify, counted as a decision of the "api"
// dialect.
func (s *Server) verify(c echo.Context) (err error) {
	cache := cacheNone
	defer func() {
		status := http.StatusOK
		if err != nil {
			status, _ = s.classify(err)
		}
		s.metrics.decided(DialectAPI, status, cache)
	}()
	ctx := c.Request().Context()
	permission, err := queryOne(c, "permission")
	if err != nil {
		return err
	}
	useCache, err := queryBool(c, "use_cache", true)
	if err != nil {
		return err
	}
	explain, err := queryBool(c, "explain", false)
	if err != nil {
		return err
	}
	var atLeast int64
	if v, err := queryOne(c, "at_least_revision"); err != nil {
		return err
	} else if v != "" {
		if atLeast, err = strconv.ParseInt(v, 10, 64); err != nil || atLeast < 0 {
			return badRequest("query parameter at_least_revision must be a non-negative integer")
		}
	}
	tok, inBody, err := readJSONString(c)
	if err != nil {
		return err
	}
	if !inBody {
		if tok, err = s.credential(c.Request()); err != nil {
			return err
		}
		if tok == "" {
			return errNoCredential
		}
	}
	if explain {
		// Why a decision went one way reveals the grant graph: admins only.
		if _, err := s.require(c, "auth/permissions#admin"); err != nil {
			return err
		}
	}
	acc, err := s.svc.VerifyAccess(ctx, tok, permission, authz.VerifyOptions{AtLeastRevision: atLeast, NoCache: !useCache, Explain: explain})
	cache = cacheLabelOf(acc.Cache)
	if atLeast > 0 && acc.Revision > 0 && acc.Revision < atLeast {
		// A decision answers at least as fresh as any revision this store
		// has reached; one it has not reached did not come from a write
		// here, and the freshness it demands cannot be given.
		return badRequest(fmt.Sprintf("at_least_revision %d is ahead of the store (at revision %d): it did not come from a write to this store", atLeast, acc.Revision))
	}
	var de *authz.DeniedError
	if explain && errors.As(err, &de) {
		return explainedDenial{de}
	}
	if err != nil {
		return err
	}
	c.Response().Header().Set("Cache-Control", "no-store")
	setRevision(c, acc.Revision)
	return c.JSON(http.StatusOK, authorizedAccess{
		Subject: acc.Subject, Resource: acc.Resource, Level: acc.Level,
		Token: accessToken{Token: tok, TokenInfo: acc.Token}, Explanation: acc.Explanation,
	})
}

func (s *Server) listPermissions(c echo.Context) error {
	res, err := queryRequired(c, "resource_name")
	if err != nil {
		return err
	}
	resolve, err := queryBool(c, "resolve_roles", true)
	if err != nil {
		return err
	}
	useCache, err := queryBool(c, "use_cache", true)
	if err != nil {
		return err
	}
	canon, err := authz.ParseResource(res)
	if err != nil {
		return err
	}
	if _, err := s.require(c, canon+"#admin"); err != nil {
		return err
	}
	perms, err := s.svc.ListPermissions(c.Request().Context(), canon, resolve, useCache)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, perms)
}

func (s *Server) permissionParams(c echo.Context) (string, string, error) {
	res, err := queryRequired(c, "resource_name")
	if err != nil {
		return "", "", err
	}
	perm, err := queryRequired(c, "permission")
	if err != nil {
		return "", "", err
	}
	if _, err := s.require(c, "auth/permissions#admin"); err != nil {
		return "", "", err
	}
	return res, perm, nil
}

func (s *Server) addPermission(c echo.Context) error {
	res, perm, err := s.permissionParams(c)
	if err != nil {
		return err
	}
	rev, err := s.svc.AddPermission(c.Request().Context(), res, perm)
	if err != nil {
		return err
	}
	s.auditChange(c, actorOf(c), AuditGrantAdd, rev, slog.String("resource", res), slog.String("permission", perm))
	setRevision(c, rev)
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) removePermission(c echo.Context) error {
	sub, err := queryBool(c, "remove_sub_permissions", false)
	if err != nil {
		return err
	}
	res, perm, err := s.permissionParams(c)
	if err != nil {
		return err
	}
	rev, err := s.svc.RemovePermission(c.Request().Context(), res, perm, sub)
	if err != nil {
		return err
	}
	s.auditChange(c, actorOf(c), AuditGrantRemove, rev, slog.String("resource", res), slog.String("permission", perm), slog.Bool("remove_sub_permissions", sub))
	setRevision(c, rev)
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) listResources(c echo.Context) error {
	perm, err := queryRequired(c, "permission")
	if err != nil {
		return err
	}
	prefix, err := queryOne(c, "resource_name_prefix")
	if err != nil {
		return err
	}
	if _, err := s.require(c, "auth/resources#admin"); err != nil {
		return err
	}
	out, err := s.svc.ResourcesWithPermission(c.Request().Context(), perm, prefix)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, out)
}

// reducedUser is what non-admins see of other users.
type reducedUser struct {
	ID       string `json:"id"`
	Username string `json:"username,omitempty"`
	Email    string `json:"email,omitempty"`
	Disabled bool   `json:"disabled"`
}

func (s *Server) listUsers(c echo.Context) error {
	acc, err := s.caller(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	users, err := s.svc.Users(ctx)
	if err != nil {
		return err
	}
	if err := s.svc.Check(ctx, acc, "users#admin"); err == nil {
		return c.JSON(http.StatusOK, users)
	} else if !errors.Is(err, authz.ErrPermissionDenied) {
		return err
	}
	out := make([]reducedUser, len(users))
	for i, u := range users {
		out[i] = reducedUser{ID: u.ID, Username: u.Username, Email: u.Email, Disabled: u.Disabled}
	}
	return c.JSON(http.StatusOK, out)
}

func (s *Server) createUser(c echo.Context) error {
	technical, err := queryBool(c, "technical_user", false)
	if err != nil {
		return err
	}
	if !s.cfg.OpenRegistration || technical {
		if _, err := s.require(c, "users#admin"); err != nil {
			return err
		}
	}
	body, err := readBody(c)
	if err != nil {
		return err
	}
	var in authz.UserInput
	if err := decodeStrict(body, &in); err != nil {
		return badRequestJSON(err)
	}
	u, rev, err := s.svc.CreateUser(c.Request().Context(), in, technical)
	if err != nil {
		return err
	}
	s.auditChange(c, actorOf(c), AuditUserCreate, rev, slog.String("user_id", u.ID), slog.String("username", u.Username), slog.Bool("technical_user", technical))
	setRevision(c, rev)
	return c.JSON(http.StatusOK, u)
}

func badRequestJSON(err error) error {
	return &problemError{status: http.StatusBadRequest, msg: "malformed JSON body", expl: jsonProblem(err), err: err}
}

func (s *Server) me(c echo.Context) error {
	acc, err := s.caller(c)
	if err != nil {
		return err
	}
	id, ok := strings.CutPrefix(acc.Subject, "users/")
	if !ok {
		return &problemError{status: http.StatusForbidden, msg: "the token does not belong to a user"}
	}
	u, err := s.svc.User(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, u)
}

// userID returns the {id} path parameter, validated.
func userID(c echo.Context) (string, error) {
	id := c.Param("id")
	if _, err := authz.ParseResource("users/" + id); err != nil || strings.ContainsAny(id, "/:") {
		return "", badRequest("invalid user id")
	}
	return id, nil
}

func (s *Server) getUser(c echo.Context) error {
	id, err := userID(c)
	if err != nil {
		return err
	}
	if _, err := s.require(c, "users/"+id+"#read"); err != nil {
		return err
	}
	u, err := s.svc.User(c.Request().Context(), id)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, u)
}

func (s *Server) updateUser(c echo.Context) error {
	id, err := userID(c)
	if err != nil {
		return err
	}
	if _, err := s.require(c, "users#admin"); err != nil {
		return err
	}
	body, err := readBody(c)
	if err != nil {
		return err
	}
	u, rev, err := s.svc.UpdateUser(c.Request().Context(), id, body)
	if err != nil {
		return err
	}
	s.auditChange(c, actorOf(c), AuditUserUpdate, rev, slog.String("user_id", u.ID), slog.Any("fields", patchFields(body)))
	setRevision(c, rev)
	return c.JSON(http.StatusOK, u)
}

func (s *Server) deleteUser(c echo.Context) error {
	id, err := userID(c)
	if err != nil {
		return err
	}
	// contaxy checks a literal "users/{user_id}" here; we check the user.
	if _, err := s.require(c, "users/"+id+"#admin"); err != nil {
		return err
	}
	rev, err := s.svc.DeleteUser(c.Request().Context(), id)
	if err != nil {
		return err
	}
	s.auditChange(c, actorOf(c), AuditUserDelete, rev, slog.String("user_id", id))
	setRevision(c, rev)
	return c.NoContent(http.StatusNoContent)
}

func (s *Server) changePassword(c echo.Context) error {
	raw := c.Param("id")
	id, ok := strings.CutSuffix(raw, ":change-password")
	if !ok {
		// PUT is only the custom method; the user itself takes these.
		c.Response().Header().Set("Allow", "GET, PATCH, DELETE")
		return echo.ErrMethodNotAllowed
	}
	c.SetParamValues(id)
	id, err := userID(c)
	if err != nil {
		return err
	}
	if _, err := s.require(c, "users/"+id+"#admin"); err != nil {
		return err
	}
	pw, err := readPassword(c)
	if err != nil {
		return err
	}
	rev, err := s.svc.ChangePassword(c.Request().Context(), id, pw)
	if err != nil {
		return err
	}
	s.auditChange(c, actorOf(c), AuditUserPassword, rev, slog.String("user_id", id))
	setRevision(c, rev)
	return c.NoContent(http.StatusNoContent)
}

// readPassword reads the body of change-password: the password as a JSON
// string, as contaxy's API documents. contaxy's Python client sends the
// bare password instead (requests' data=password, no Content-Type), so a
// body that is not JSON at all, sent without a JSON Content-Type, is the
// password itself. A body that is JSON but not a string is refused: it is
// ambiguous.
func readPassword(c echo.Context) (string, error) {
	body, err := readBody(c)
	if err != nil {
		return "", err
	}
	const want = "body must be the new password as a JSON string"
	if len(body) == 0 {
		return "", badRequest(want)
	}
	var pw string
	err = decodeStrict(body, &pw)
	if err == nil {
		return pw, nil
	}
	var probe any
	if isJSONContentType(c.Request().Header.Get("Content-Type")) || json.Unmarshal(body, &probe) == nil {
		return "", badRequest(want)
	}
	return string(body), nil
}

// isJSONContentType reports application/json and its +json relatives.
func isJSONContentType(ct string) bool {
	mt, _, _ := strings.Cut(strings.ToLower(ct), ";")
	mt = strings.TrimSpace(mt)
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

func (s *Server) userToken(c echo.Context) error {
	id, err := userID(c)
	if err != nil {
		return err
	}
	lvlParam, err := queryOne(c, "access_level")
	if err != nil {
		return err
	}
	if lvlParam == "" {
		lvlParam = "write"
	}
	lvl, err := authz.ParseLevel(lvlParam)
	if err != nil {
		return err
	}
	perm := "users/" + id + "#" + lvl.String()
	if _, err := s.require(c, perm); err != nil {
		return err
	}
	if _, err := s.svc.User(c.Request().Context(), id); err != nil {
		return err
	}
	tok, info, rev, err := s.svc.IssueToken(c.Request().Context(), authz.TokenSpec{
		Subject: "users/" + id, Scopes: []string{perm}, Type: authz.TokenTypeAPI, Purpose: authz.PurposeUserAPI,
		Description: "user token (" + lvl.String() + ") created " + time.Now().UTC().Format(time.RFC3339),
	})
	if err != nil {
		return err
	}
	s.auditChange(c, actorOf(c), AuditTokenCreate, rev, tokenAttrs(info)...)
	setRevision(c, rev)
	c.Response().Header().Set("Cache-Control", "no-store")
	return c.JSON(http.StatusOK, tok)
}

package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// The OpenID AuthZEN Authorization API 1.0, mapped onto verify_access:
//
//   - subject (type, id), resource (type, id) and action (name) are
//     required, as the specification says; unknown members are ignored;
//   - the subject is the bearer of a token: the caller's own, or the one a
//     policy enforcement point forwards in subject.properties.token (the
//     caller must then be authenticated itself); subject.id must name the
//     token's subject ("users/<id>", or id with type "user"), else the
//     decision is false;
//   - the permission is RESOURCE#LEVEL with RESOURCE = resource.id when it
//     contains '/' or ':' (a full resource name) or the type is
//     "resource", else "<type>/<id>"; LEVEL from action.name: read, write,
//     admin, can_read, can_write, can_admin, or an HTTP method
//     (GET/HEAD/OPTIONS → read, POST/PUT/PATCH → write, DELETE → admin).

type authzenEntity struct {
	Type       string         `json:"type"`
	ID         string         `json:"id"`
	Properties map[string]any `json:"properties,omitempty"`
}

type authzenAction struct {
	Name       string         `json:"name"`
	Properties map[string]any `json:"properties,omitempty"`
}

type authzenRequest struct {
	Subject  *authzenEntity `json:"subject,omitempty"`
	Resource *authzenEntity `json:"resource,omitempty"`
	Action   *authzenAction `json:"action,omitempty"`
	Context  map[string]any `json:"context,omitempty"`
}

type authzenDecision struct {
	Decision bool           `json:"decision"`
	Context  map[string]any `json:"context,omitempty"`
}

type authzenBatch struct {
	authzenRequest
	Evaluations []authzenRequest `json:"evaluations"`
	Options     struct {
		Semantic *string `json:"evaluations_semantic"`
	} `json:"options"`
}

// The evaluations_semantic values of AuthZEN 1.0 §7.1.2.
const (
	semanticExecuteAll          = "execute_all"
	semanticDenyOnFirstDeny     = "deny_on_first_deny"
	semanticPermitOnFirstPermit = "permit_on_first_permit"
)

// maxEvaluations bounds one batch.
const maxEvaluations = 100

// readAuthZEN decodes an AuthZEN request body. Unknown members are
// ignored, as the specification requires for forward compatibility;
// members of the wrong type, malformed JSON, an empty body and a
// Content-Type other than JSON are refused.
func readAuthZEN(c echo.Context, v any) error {
	if ct := c.Request().Header.Get("Content-Type"); ct != "" && !isJSONContentType(ct) {
		return badRequest("Content-Type must be application/json")
	}
	body, err := readBody(c)
	if err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(v); err != nil {
		return badRequestJSON(err)
	}
	if dec.More() {
		return badRequestJSON(errTrailing)
	}
	return nil
}

func (s *Server) evaluation(c echo.Context) error {
	var req authzenRequest
	if err := readAuthZEN(c, &req); err != nil {
		return err
	}
	d, err := s.evaluate(c, req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

func (s *Server) evaluations(c echo.Context) error {
	var req authzenBatch
	if err := readAuthZEN(c, &req); err != nil {
		return err
	}
	semantic := semanticExecuteAll
	if req.Options.Semantic != nil {
		semantic = *req.Options.Semantic
	}
	switch semantic {
	case semanticExecuteAll, semanticDenyOnFirstDeny, semanticPermitOnFirstPermit:
	default:
		return badRequest("options.evaluations_semantic " + quoteJSON(semantic) + " is not execute_all, deny_on_first_deny or permit_on_first_permit")
	}
	if len(req.Evaluations) > maxEvaluations {
		return badRequest(fmt.Sprintf("at most %d evaluations per request", maxEvaluations))
	}
	if len(req.Evaluations) == 0 {
		// §7.1: without evaluations the request is a single Access
		// Evaluation, and so is its answer.
		d, err := s.evaluate(c, req.authzenRequest)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, d)
	}
	// The caller must be authenticated before any evaluation runs: a
	// failure here is the whole request's.
	if _, err := s.caller(c); err != nil {
		return err
	}
	out := make([]authzenDecision, 0, len(req.Evaluations))
	for _, e := range req.Evaluations {
		e = withDefaults(e, req.authzenRequest)
		d, err := s.evaluate(c, e)
		var pe *problemError
		if errors.As(err, &pe) && pe.status == http.StatusBadRequest {
			// One bad evaluation does not fail the batch: it is denied,
			// with the reason in its context.
			d, err = authzenDecision{Context: map[string]any{"error": map[string]any{"status": pe.status, "message": pe.msg}}}, nil
		}
		if err != nil {
			return err
		}
		out = append(out, d)
		if (semantic == semanticDenyOnFirstDeny && !d.Decision) || (semantic == semanticPermitOnFirstPermit && d.Decision) {
			break
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"evaluations": out})
}

// withDefaults fills what an evaluation of a batch leaves out from the
// top-level request: a missing subject, resource, action or context is
// the top-level one; a given entity replaces the top-level one as a
// whole, except that a missing type, id or name falls back to the
// top-level value.
func withDefaults(e, top authzenRequest) authzenRequest {
	e.Subject = entityWithDefaults(e.Subject, top.Subject)
	e.Resource = entityWithDefaults(e.Resource, top.Resource)
	switch {
	case e.Action == nil:
		e.Action = top.Action
	case e.Action.Name == "" && top.Action != nil:
		a := *e.Action
		a.Name = top.Action.Name
		e.Action = &a
	}
	if e.Context == nil {
		e.Context = top.Context
	}
	return e
}

func entityWithDefaults(e, top *authzenEntity) *authzenEntity {
	if e == nil || top == nil {
		if e == nil {
			return top
		}
		return e
	}
	out := *e
	if out.Type == "" {
		out.Type = top.Type
	}
	if out.ID == "" {
		out.ID = top.ID
	}
	return &out
}

// missingMembers names what an entity lacks of its required type and id.
func missingMembers(name string, e *authzenEntity) []string {
	if e == nil {
		return []string{name}
	}
	var missing []string
	if e.Type == "" {
		missing = append(missing, name+".type")
	}
	if e.ID == "" {
		missing = append(missing, name+".id")
	}
	return missing
}

// validateAuthZEN checks the members §5 and §6.1 require: subject (type,
// id), resource (type, id) and action (name).
func validateAuthZEN(r authzenRequest) error {
	missing := append(missingMembers("subject", r.Subject), missingMembers("resource", r.Resource)...)
	switch {
	case r.Action == nil:
		missing = append(missing, "action")
	case r.Action.Name == "":
		missing = append(missing, "action.name")
	}
	if len(missing) > 0 {
		return badRequest("missing " + strings.Join(missing, ", "))
	}
	return nil
}

func (s *Server) evaluate(c echo.Context, r authzenRequest) (authzenDecision, error) {
	if err := validateAuthZEN(r); err != nil {
		return authzenDecision{}, err
	}
	perm, err := authzenPermission(r.Resource, r.Action)
	if err != nil {
		return authzenDecision{}, err
	}
	// The caller must be authenticated whatever it asks about.
	if _, err := s.caller(c); err != nil {
		return authzenDecision{}, err
	}
	tok := ""
	if t, ok := r.Subject.Properties["token"].(string); ok {
		tok = t
	}
	if tok == "" {
		if tok, err = s.credential(c.Request()); err != nil {
			return authzenDecision{}, err
		}
	}
	got, err := s.svc.VerifyAccess(c.Request().Context(), tok, perm, authz.VerifyOptions{})
	switch {
	case err == nil:
	case errors.Is(err, authz.ErrPermissionDenied), errors.Is(err, authz.ErrUnauthenticated):
		return authzenDecision{Decision: false}, nil
	default:
		return authzenDecision{}, err
	}
	if !sameSubject(r.Subject, got.Subject) {
		return authzenDecision{Decision: false, Context: map[string]any{"reason_admin": map[string]string{"en": "subject does not match the token's subject"}}}, nil
	}
	return authzenDecision{Decision: true}, nil
}

func sameSubject(e *authzenEntity, subject string) bool {
	if e.ID == subject {
		return true
	}
	t := strings.ToLower(e.Type)
	if t == "user" || t == "users" {
		return "users/"+e.ID == subject
	}
	return e.Type != "" && strings.TrimSuffix(e.Type, "s")+"s/"+e.ID == subject
}

func authzenPermission(res *authzenEntity, act *authzenAction) (string, error) {
	name := res.ID
	if name == "" {
		return "", badRequest("resource.id is required")
	}
	if res.Type != "" && res.Type != "resource" && !strings.ContainsAny(name, "/:") {
		name = res.Type + "/" + name
	}
	var level string
	switch a := strings.ToLower(strings.TrimSpace(act.Name)); a {
	case "read", "can_read", "get", "head", "options":
		level = "read"
	case "write", "can_write", "post", "put", "patch", "create", "update":
		level = "write"
	case "admin", "can_admin", "delete":
		level = "admin"
	default:
		return "", badRequest("action.name " + quoteJSON(act.Name) + " is not read, write or admin (or can_read, can_write, can_admin, or an HTTP method)")
	}
	p, err := authz.ParsePermission(name + "#" + level)
	if err != nil {
		return "", badRequest("resource " + quoteJSON(name) + " is not a valid resource name")
	}
	return p.String(), nil
}

func quoteJSON(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}

// authzenMetadata is the PDP metadata of AuthZEN 1.0 (the discovery
// document at /.well-known/authzen-configuration): where the evaluation
// endpoints are. Portcullis offers no search endpoints.
func (s *Server) authzenMetadata(c echo.Context) error {
	base := s.baseURL(c.Request())
	c.Response().Header().Set("Cache-Control", "public, max-age=300")
	return c.JSON(http.StatusOK, map[string]any{
		"policy_decision_point":       base,
		"access_evaluation_endpoint":  base + "/access/v1/evaluation",
		"access_evaluations_endpoint": base + "/access/v1/evaluations",
	})
}

package proxy

import (
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/portcullis/portcullis/authz"
)

// The OpenID AuthZEN Authorization API 1.0, mapped onto verify_access:
//
//   - the subject is the bearer of a token: the caller's own, or the one a
//     policy enforcement point forwards in subject.properties.token (the
//     caller must then be authenticated itself); a subject.id, when given,
//     must name the token's subject ("users/<id>", or id with type "user");
//   - the permission is RESOURCE#LEVEL with RESOURCE = resource.id when it
//     contains '/' or ':' (a full resource name) or has no type, else
//     "<type>/<id>"; LEVEL from action.name: read, write, admin, can_read,
//     can_write, can_admin, or an HTTP method (GET/HEAD/OPTIONS → read,
//     POST/PUT/PATCH → write, DELETE → admin).

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
	Options     map[string]any   `json:"options,omitempty"`
}

func (s *Server) evaluation(c echo.Context) error {
	body, err := readBody(c)
	if err != nil {
		return err
	}
	var req authzenRequest
	if err := decodeStrict(body, &req); err != nil {
		return badRequestJSON(err)
	}
	d, err := s.evaluate(c, req)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, d)
}

func (s *Server) evaluations(c echo.Context) error {
	body, err := readBody(c)
	if err != nil {
		return err
	}
	var req authzenBatch
	if err := decodeStrict(body, &req); err != nil {
		return badRequestJSON(err)
	}
	if len(req.Evaluations) > 100 {
		return badRequest("at most 100 evaluations per request")
	}
	semantic, _ := req.Options["evaluations_semantic"].(string)
	if len(req.Evaluations) == 0 {
		d, err := s.evaluate(c, req.authzenRequest)
		if err != nil {
			return err
		}
		return c.JSON(http.StatusOK, map[string]any{"evaluations": []authzenDecision{d}})
	}
	out := make([]authzenDecision, 0, len(req.Evaluations))
	for _, e := range req.Evaluations {
		// Each evaluation inherits the top-level values it does not set.
		if e.Subject == nil {
			e.Subject = req.Subject
		}
		if e.Resource == nil {
			e.Resource = req.Resource
		}
		if e.Action == nil {
			e.Action = req.Action
		}
		d, err := s.evaluate(c, e)
		if err != nil {
			return err
		}
		out = append(out, d)
		if (semantic == "deny_on_first_deny" && !d.Decision) || (semantic == "permit_on_first_permit" && d.Decision) {
			break
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"evaluations": out})
}

func (s *Server) evaluate(c echo.Context, r authzenRequest) (authzenDecision, error) {
	if r.Resource == nil || r.Action == nil {
		return authzenDecision{}, badRequest("resource and action are required")
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
	if r.Subject != nil {
		if t, ok := r.Subject.Properties["token"].(string); ok {
			tok = t
		}
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
	if r.Subject != nil && r.Subject.ID != "" && !sameSubject(r.Subject, got.Subject) {
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
		return "", err
	}
	return p.String(), nil
}

func quoteJSON(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return `"` + strings.ReplaceAll(s, `"`, `\"`) + `"`
}
